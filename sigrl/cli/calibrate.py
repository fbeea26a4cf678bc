"""``sigrl calibrate``: per-class thresholds maximising F1 on a validation split, for ``sigrl tag --thresholds``."""

from __future__ import annotations

import argparse

import numpy as np

from sigrl.cli.arguments import non_negative_int, positive_int, writable_file, write_json
from sigrl.cli.deploy import add_runtime_arguments, check_runtime_arguments, runtime_from_arguments
from sigrl.registry import DATASET_NAMES


def cmd_calibrate(args: argparse.Namespace) -> int:
    from sigrl.calibration import calibrate_thresholds, f1_at
    from sigrl.checkpoint import load_checkpoint
    from sigrl.cli.training import checkpoint_dataset
    from sigrl.data import build_dataset
    from sigrl.deploy.accuracy import runtime_predict

    out = writable_file("--out", args.out)  # checked before the (long) scoring
    kind = check_runtime_arguments(args)
    data, root, options = checkpoint_dataset(args)
    if data == "nus-wide" and args.split == "test":
        options["vocabulary"] = "gzsl"  # seen and unseen labels
    model = load_checkpoint(args.checkpoint)
    runtime = runtime_from_arguments(args, kind, model)
    dataset = build_dataset(data, args.split, root, model.config.vision_cfg["image_size"], **options)
    scores = runtime_predict(runtime, model.prompt_template, dataset, {"own": dataset.vocabulary},
                             min(args.batch_size, 32), args.workers, progress=True)["own"]
    labels = np.asarray(dataset.labels)
    calibration = calibrate_thresholds(scores, labels, dataset.vocabulary)
    write_json(out, calibration.to_json())
    per_class = [f1_at(scores[:, c], labels[:, c], calibration.global_threshold)
                 for c, name in enumerate(dataset.vocabulary) if name in calibration.f1]
    print(f"{len(dataset.vocabulary)} thresholds from {len(dataset)} {data} {args.split} images "
          f"({runtime.name} runtime) written to {args.out}")
    print(f"global threshold {calibration.global_threshold:.6f}: overall F1 {100 * calibration.global_f1:.2f}, "
          f"mean per-class F1 {100 * np.mean(per_class):.2f}; per-class thresholds: mean per-class F1 "
          f"{100 * np.mean(list(calibration.f1.values())):.2f} (both measured on the calibration images)")
    if calibration.fallback:
        print(f"{len(calibration.fallback)} class(es) without a positive use the global threshold: "
              + ", ".join(calibration.fallback[:10]) + (" ..." if len(calibration.fallback) > 10 else ""))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``calibrate`` to the ``sigrl`` parser."""
    calibrate = commands.add_parser("calibrate", help="per-class thresholds maximising F1 on a validation split")
    calibrate.add_argument("--checkpoint", required=True, help="the trained model (and the data it records)")
    add_runtime_arguments(calibrate, "score with these exported engines instead of the checkpoint's PyTorch model")
    calibrate.add_argument("--data", choices=DATASET_NAMES, help="default: the dataset it was trained on")
    calibrate.add_argument("--data-root")
    calibrate.add_argument("--image-root", help="COCO/VOC: folder the image paths are relative to")
    calibrate.add_argument("--split", default="val", choices=("val", "test"),
                           help="val: the split held out in training (default); test labels should stay unseen")
    calibrate.add_argument("--out", required=True, help='JSON file {"label": threshold, ..., "*": global}')
    calibrate.add_argument("--batch-size", type=positive_int, default=32, help="images per batch (at most 32)")
    calibrate.add_argument("--workers", type=non_negative_int, default=0)
    calibrate.set_defaults(func=cmd_calibrate)
