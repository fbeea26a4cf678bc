"""The ``sigrl`` command: ``demo``, ``train``, ``eval``, ``params``, ``export`` and ``parity`` over one model registry."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

import torch

from sigrl.checkpoint import load_checkpoint, read_checkpoint
from sigrl.data import DATASET_NAMES
from sigrl.factory import create_model, list_models
from sigrl.params import format_parameter_table, parameter_table


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from sigrl.training.recipes import LOSSES

    parser.add_argument("--config", default="tiny", choices=list_models(), help="model configuration and recipe")
    parser.add_argument("--data", choices=DATASET_NAMES, help="dataset (default: the recipe's)")
    parser.add_argument("--data-root", help="folder holding the dataset's files (not for synthetic)")
    parser.add_argument("--image-root", help="COCO/VOC: folder the image paths are relative to (default: data root)")
    parser.add_argument("--out", help="output folder for last.pt / best.pt")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--pretrained", help="local CLIP weights: open_clip checkpoint or OpenAI TorchScript file")
    parser.add_argument("--loss", default=None, choices=LOSSES, help="rank (zero-shot) or an SPML loss")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--max-steps", type=int, help="stop after this many steps (schedule still spans --epochs)")
    parser.add_argument("--batch-size", type=int, help="global batch, split across torchrun processes")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--distill-weight", type=float)
    parser.add_argument("--rank-scale", type=float, help="initial learnable ranking-loss scale (0: none)")
    parser.add_argument("--coop-n-ctx", type=int, help="learn N CoOp context vectors (image side frozen)")
    parser.add_argument("--class-chunk", type=int, help="SVFR classes per chunk (memory only)")
    parser.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast on CUDA")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device")
    parser.add_argument("--synthetic-train-images", type=int)
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None)


def _train_config(args: argparse.Namespace):
    from sigrl.training.recipes import TrainConfig, recipe_for

    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
             if getattr(args, f.name, None) is not None and f.name not in ("model", "data", "loss")}
    if given.get("rank_scale") == 0:
        given["rank_scale"] = None
    if args.resume:
        out = Path(given.get("out") or f"runs/{args.config}")
        stored = read_checkpoint(out / "last.pt")["train"]["config"]
        return TrainConfig(**{**stored, **given, "out": str(out)})
    config = recipe_for(args.config, args.loss or "rank", args.data, **given)
    if "out" not in given:
        config.out = f"runs/{args.config}" if args.data is None else f"runs/{args.config}-{args.data}"
    return config


def cmd_train(args: argparse.Namespace) -> int:
    from sigrl.training import train

    config = _train_config(args)
    result = train(config, resume=args.resume)
    print(f"best validation mAP {result['best_val_mAP']:.2f} after {result['steps']} steps; "
          f"checkpoints in {config.out}/")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from sigrl.evaluation import evaluate_dataset, format_report

    stored = read_checkpoint(args.checkpoint).get("data", {})
    data = args.data or stored.get("name")
    if data is None:
        raise SystemExit(f"{args.checkpoint} does not record its dataset: pass --data")
    same_data = data == stored.get("name")
    root = args.data_root or (stored.get("root") if same_data else None)
    image_root = args.image_root or (stored.get("image_root") if same_data else None)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_checkpoint(args.checkpoint).to(device)
    if args.class_chunk:
        model.set_class_chunk(args.class_chunk)
    report = evaluate_dataset(model, data, root, args.split, args.batch_size, device, args.workers, progress=True,
                              image_root=image_root)
    print(format_report(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"checkpoint": str(args.checkpoint), "data": data,
                                               "split": args.split, "results": report}, indent=2))
        print(f"report written to {args.json}")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    model = create_model(args.config)
    print(f"parameters of {args.config!r} (training freezes per the config; the teacher exists only in training)")
    print(format_parameter_table(parameter_table(model)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from sigrl.deploy.onnx_export import export_checkpoint

    report = export_checkpoint(args.checkpoint, args.out, expect_config=args.config)
    for name, info in report.items():
        print(f"{info['path']}: {info['bytes'] / 2**20:.1f} MiB, exported in {info['seconds']:.1f} s")
    return 0


def cmd_parity(args: argparse.Namespace) -> int:
    from sigrl.deploy.parity import compare_runtimes, format_rows, parity_inputs
    from sigrl.deploy.runtimes import OnnxRuntime, TorchRuntime

    model = load_checkpoint(args.checkpoint)
    reference, candidate = TorchRuntime(model), OnnxRuntime(args.engines, device=args.device)
    vocabularies, images = parity_inputs(model.vocabulary or [], model.prompt_template,
                                         model.config.vision_cfg["image_size"], args.classes, args.batch)
    rows = compare_runtimes(reference, candidate, vocabularies, images, precision="fp32")
    print(f"PyTorch eager ({reference.provider}) vs ONNX Runtime ({candidate.provider}), fp32 tolerances")
    print(format_rows(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([r.to_dict() for r in rows], indent=2))
    failed = [r for r in rows if not r.passed]
    print(f"{len(rows) - len(failed)}/{len(rows)} comparisons within tolerance")
    return 1 if failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Train ``tiny`` on the synthetic shapes, evaluate it, and show the top labels of a few test images."""
    from sigrl.data import build_dataset
    from sigrl.evaluation import evaluate_dataset, format_report, predict
    from sigrl.training import recipe_for, train

    config = recipe_for("tiny", out=args.out, max_steps=args.max_steps)
    print(f"training 'tiny' on synthetic shapes for {config.epochs} epochs (CPU, about a minute) ...")
    train(config)
    model = load_checkpoint(Path(args.out) / "best.pt")
    print("\nsynthetic test set, tiny model:")
    print(format_report(evaluate_dataset(model, "synthetic", split="test")))
    test = build_dataset("synthetic", "test", image_size=model.config.vision_cfg["image_size"], num_images=4)
    scores = predict(model, test, {"vocab": model.vocabulary})["vocab"]
    print("\ntop labels of 4 test images (score), against the ground truth:")
    for row, labels in zip(scores, test.labels):
        top = sorted(range(len(row)), key=lambda c: -row[c])[:4]
        truth = [model.vocabulary[c] for c in range(len(row)) if labels[c] > 0]
        print("  " + ", ".join(f"{model.vocabulary[c]} ({row[c]:.2f})" for c in top) + f"   | truth: {', '.join(truth)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sigrl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train tiny on synthetic data, evaluate, print top labels")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--max-steps", type=int)
    demo.set_defaults(func=cmd_demo)
    train = commands.add_parser("train", help="train a model (torchrun for several processes)")
    _add_train_arguments(train)
    train.set_defaults(func=cmd_train)
    evaluate = commands.add_parser("eval", help="evaluate a checkpoint with the paper's protocols")
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--data", choices=DATASET_NAMES, help="default: the dataset it was trained on")
    evaluate.add_argument("--data-root")
    evaluate.add_argument("--image-root", help="COCO/VOC: folder the image paths are relative to")
    evaluate.add_argument("--split", default="test", choices=("val", "test"))
    evaluate.add_argument("--json", help="write the report as JSON here")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--class-chunk", type=int)
    evaluate.add_argument("--workers", type=int, default=0)
    evaluate.add_argument("--device")
    evaluate.set_defaults(func=cmd_eval)
    params = commands.add_parser("params", help="print the parameter count table, trainable vs frozen")
    params.add_argument("--config", default="vit-b16", choices=list_models())
    params.set_defaults(func=cmd_params)
    export = commands.add_parser("export", help="export a checkpoint as two ONNX engines (text+GMC, image+SVFR)")
    export.add_argument("--checkpoint", required=True)
    export.add_argument("--out", required=True, help="folder for text_gmc.onnx and image_svfr.onnx")
    export.add_argument("--config", choices=list_models(), help="fail unless the checkpoint holds this config")
    export.set_defaults(func=cmd_export)
    parity = commands.add_parser("parity", help="compare exported ONNX engines with the PyTorch checkpoint")
    parity.add_argument("--checkpoint", required=True)
    parity.add_argument("--engines", required=True, help="folder written by `sigrl export`")
    parity.add_argument("--classes", type=int, nargs="+", default=[1, 12, 300], help="vocabulary sizes")
    parity.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="image batch sizes")
    parity.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="ONNX Runtime device")
    parity.add_argument("--json", help="write the rows as JSON here")
    parity.set_defaults(func=cmd_parity)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
