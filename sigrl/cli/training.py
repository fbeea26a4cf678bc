"""Commands of the model itself: ``train``, ``eval``, ``params``."""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--random-init", action="store_true", default=None,
                        help="train vit-b16 without --pretrained, from random weights, on purpose")
    parser.add_argument("--loss", default=None, choices=LOSSES, help="rank (zero-shot) or an SPML loss")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--max-steps", type=int, help="stop after this many steps (schedule still spans --epochs)")
    parser.add_argument("--batch-size", type=int, help="global batch, split across torchrun processes")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--schedule", choices=("cosine", "constant"),
                        help="lr after warm-up: cosine to the recipe's min lr, or constant (default: the recipe's)")
    parser.add_argument("--val-fraction", type=float, metavar="F",
                        help="share of the training images held out for model selection (nus-wide 0.1, coco/voc "
                             "0.2); 0: train on all of them and keep the last epoch")
    parser.add_argument("--eval-precision", choices=("fp32", "bf16"), help="validation scoring (default fp32)")
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
    if args.random_init and args.pretrained:
        raise ValueError("--random-init and --pretrained exclude each other: pass one")
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
    if result["best_val_mAP"] is None:
        print(f"trained {result['steps']} steps without a validation split: best.pt holds the last epoch; "
              f"checkpoints in {config.out}/")
    else:
        print(f"best validation mAP {result['best_val_mAP']:.2f} after {result['steps']} steps; "
              f"checkpoints in {config.out}/")
    return 0


def checkpoint_dataset(args: argparse.Namespace) -> tuple[str, str | None, dict]:
    """(dataset name, root, reader options) for ``--checkpoint``: ``--data``/``--data-root``/``--image-root``
    where given, else what the checkpoint recorded, including its held-out validation fraction so that
    ``--split val`` is the split it was selected on."""
    stored = read_checkpoint(args.checkpoint).get("data", {})
    data = args.data or stored.get("name")
    if data is None:
        raise SystemExit(f"{args.checkpoint} does not record its dataset: pass --data")
    same_data = data == stored.get("name")
    root = args.data_root or (stored.get("root") if same_data else None)
    options = {"image_root": args.image_root or (stored.get("image_root") if same_data else None)}
    if same_data and stored.get("val_fraction") is not None and data != "synthetic":
        options["val_fraction"] = stored["val_fraction"]
    if args.split == "val" and options.get("val_fraction") == 0:
        raise ValueError(f"{args.checkpoint} was trained on all training images (--val-fraction 0): it has no "
                         "held-out validation split; use --split test or a checkpoint trained with a validation split")
    return data, root, options


def cmd_eval(args: argparse.Namespace) -> int:
    from sigrl.evaluation import evaluate_dataset, format_report

    data, root, options = checkpoint_dataset(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_checkpoint(args.checkpoint).to(device)
    if args.class_chunk:
        model.set_class_chunk(args.class_chunk)
    report = evaluate_dataset(model, data, root, args.split, args.batch_size, device, args.workers, progress=True,
                              precision=args.precision, **options)
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



def register(commands: argparse._SubParsersAction) -> None:
    """Add ``train``, ``eval`` and ``params`` to the ``sigrl`` parser."""
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
    evaluate.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                          help="fp32: the paper's protocol (default); bf16: autocast, faster on GPUs, more ties")
    evaluate.set_defaults(func=cmd_eval)
    params = commands.add_parser("params", help="print the parameter count table, trainable vs frozen")
    params.add_argument("--config", default="vit-b16", choices=list_models())
    params.set_defaults(func=cmd_params)
