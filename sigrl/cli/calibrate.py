"""``sigrl calibrate``: per-class thresholds maximising F1 on a validation split, for ``sigrl tag --thresholds``."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sigrl.data import DATASET_NAMES

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from sigrl.deploy.runtimes import EngineRuntime


def _score_dataset(runtime: EngineRuntime, dataset: Dataset, token_ids: np.ndarray, batch_size: int, workers: int) -> np.ndarray:
    """Scores [N, C] of every image of ``dataset`` with an engine runtime (PyTorch or ONNX Runtime), fp32."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    label_emb, graph_emb = runtime.encode_labels(token_ids)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    return np.concatenate([runtime.score_images(batch["image"].numpy(), label_emb, graph_emb)
                           for batch in tqdm(loader, desc="scoring", leave=False)])


def _runtime(args: argparse.Namespace) -> tuple[EngineRuntime, str, int]:
    """(runtime, prompt template, image size): the checkpoint in PyTorch, or its exported ONNX engines."""
    from sigrl.checkpoint import load_checkpoint
    from sigrl.deploy.runtimes import OnnxRuntime, TorchRuntime

    if args.engines is None:
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = load_checkpoint(args.checkpoint)
        return TorchRuntime(model, device), model.prompt_template, model.config.vision_cfg["image_size"]
    from sigrl.deploy.engines import TextGMCEngine
    from sigrl.deploy.onnx_export import file_sha256, read_metadata
    from sigrl.deploy.runtimes import engine_config

    config = engine_config(args.engines)
    metadata = read_metadata(Path(args.engines) / TextGMCEngine.file_name)
    exported_from = metadata.get("checkpoint_sha256")
    if exported_from and exported_from != file_sha256(args.checkpoint):
        raise ValueError(f"--engines {args.engines} were exported from another checkpoint than {args.checkpoint}")
    runtime = OnnxRuntime(args.engines, device=args.device or "auto")
    largest = runtime.image_spec.axis_ranges["B"][2]
    if args.batch_size > largest:
        raise ValueError(f"--batch-size {args.batch_size} exceeds the image engine's largest batch {largest}")
    return runtime, metadata["prompt_template"], config.vision_cfg["image_size"]


def _write_json_atomically(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(content, handle, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cmd_calibrate(args: argparse.Namespace) -> int:
    from sigrl.calibration import calibrate_thresholds, f1_at
    from sigrl.cli.training import checkpoint_dataset
    from sigrl.data import build_dataset
    from sigrl.tokenizer import tokenize

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    out = Path(args.out)
    if out.is_dir() or not os.access(next(p for p in (out.parent, *out.parent.parents) if p.exists()), os.W_OK):
        raise ValueError(f"--out {out}: not a writable file path")  # checked before the (long) scoring
    data, root, options = checkpoint_dataset(args)
    if data == "nus-wide" and args.split == "test":
        options["vocabulary"] = "gzsl"  # seen and unseen labels
    runtime, template, image_size = _runtime(args)
    dataset = build_dataset(data, args.split, root, image_size, **options)
    scores = _score_dataset(runtime, dataset, tokenize(dataset.vocabulary, template).numpy(), args.batch_size,
                            args.workers)
    labels = np.asarray(dataset.labels)
    calibration = calibrate_thresholds(scores, labels, dataset.vocabulary)
    _write_json_atomically(out, calibration.to_json())
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
    calibrate.add_argument("--engines", help="score with these exported ONNX engines (ONNX Runtime) instead of PyTorch")
    calibrate.add_argument("--data", choices=DATASET_NAMES, help="default: the dataset it was trained on")
    calibrate.add_argument("--data-root")
    calibrate.add_argument("--image-root", help="COCO/VOC: folder the image paths are relative to")
    calibrate.add_argument("--split", default="val", choices=("val", "test"),
                           help="val: the split held out in training (default); test labels should stay unseen")
    calibrate.add_argument("--out", required=True, help='JSON file {"label": threshold, ..., "*": global}')
    calibrate.add_argument("--batch-size", type=int, default=32, help="images per batch (engines take at most 32)")
    calibrate.add_argument("--workers", type=int, default=0)
    calibrate.add_argument("--device", help="PyTorch: cpu or cuda; engines: auto, cpu or cuda")
    calibrate.set_defaults(func=cmd_calibrate)
