"""Commands of the model itself: ``train``, ``eval``, ``params``."""

from __future__ import annotations

import argparse
from dataclasses import asdict, fields
from pathlib import Path

from sigrl.cli.arguments import (
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    torch_device,
    writable_file,
    writable_folder,
    write_json,
)
from sigrl.cli.deploy import add_runtime_arguments, check_runtime_arguments, runtime_from_arguments
from sigrl.errors import UsageError
from sigrl.registry import DATASET_NAMES, EVAL_PRECISIONS, LOSSES, list_models


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--epochs", type=positive_int)
    parser.add_argument("--max-steps", type=positive_int,
                        help="stop after this many steps (schedule still spans --epochs)")
    parser.add_argument("--batch-size", type=positive_int, help="global batch, split across torchrun processes")
    parser.add_argument("--lr", type=positive_float)
    parser.add_argument("--schedule", choices=("cosine", "constant"),
                        help="lr after warm-up: cosine to the recipe's min lr, or constant (default: the recipe's)")
    parser.add_argument("--val-fraction", type=non_negative_float, metavar="F",
                        help="share of the training images held out for model selection (nus-wide 0.1, coco/voc "
                             "0.2); 0: train on all of them and keep the last epoch")
    parser.add_argument("--eval-precision", choices=EVAL_PRECISIONS, help="validation scoring (default fp32)")
    parser.add_argument("--distill-weight", type=non_negative_float)
    parser.add_argument("--rank-scale", type=non_negative_float, help="initial learnable ranking-loss scale (0: none)")
    parser.add_argument("--coop-n-ctx", type=non_negative_int, help="learn N CoOp context vectors (image side frozen)")
    parser.add_argument("--class-chunk", type=positive_int, help="SVFR classes per chunk (memory only)")
    parser.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast on CUDA")
    parser.add_argument("--workers", type=non_negative_int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: this process's GPU if any, else cpu)")
    parser.add_argument("--synthetic-train-images", type=positive_int)
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                        help="no progress bar or step lines (the per-evaluation lines stay)")
    parser.add_argument("--log-every", type=positive_int,
                        help="outside a terminal: print a progress line every N steps")
    parser.add_argument("--json", help="write the result (best validation mAP, steps, config) as JSON here")


def _check_data_flags(data: str, data_root: str | None, image_root: str | None) -> None:
    """Refuse dataset flags that cannot work, naming the flag (before any model is built)."""
    if data == "synthetic":
        return
    for flag, folder in (("--data-root", data_root), ("--image-root", image_root)):
        if folder is not None and not Path(folder).is_dir():
            raise UsageError(f"{flag} {folder}: no such folder")
    if data_root is None:
        raise UsageError(f"--data {data} needs --data-root, the folder holding its files")


def _train_config(args: argparse.Namespace):
    from sigrl.checkpoint import read_checkpoint
    from sigrl.training.recipes import TrainConfig, recipe_for

    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
             if getattr(args, f.name, None) is not None and f.name not in ("model", "data", "loss")}
    if given.get("rank_scale") == 0:
        given["rank_scale"] = None
    if args.resume:
        out = Path(given.get("out") or f"runs/{args.config}")
        if not (out / "last.pt").is_file():
            raise UsageError(f"--resume: {out / 'last.pt'} not found; train without --resume first, "
                             "or pass the --out of the run to continue")
        stored = read_checkpoint(out / "last.pt")["train"]["config"]
        return TrainConfig(**{**stored, **given, "out": str(out)})
    config = recipe_for(args.config, args.loss or "rank", args.data, **given)
    if "out" not in given:
        config.out = f"runs/{args.config}" if args.data is None else f"runs/{args.config}-{args.data}"
    if (Path(config.out) / "last.pt").exists():
        raise UsageError(f"--out {config.out} already holds a run (last.pt): pass --resume to continue it, "
                         "or another --out")
    return config


def cmd_train(args: argparse.Namespace) -> int:
    if args.random_init and args.pretrained:
        raise UsageError("--random-init and --pretrained exclude each other: pass one")
    torch_device("--device", args.device)
    if args.pretrained is not None and not Path(args.pretrained).is_file():
        raise UsageError(f"--pretrained {args.pretrained}: no such file (a local CLIP checkpoint is needed)")
    json_path = writable_file("--json", args.json) if args.json else None
    config = _train_config(args)
    _check_data_flags(config.data, config.data_root, config.image_root)
    writable_folder("--out", config.out)
    from sigrl.training import train

    result = train(config, resume=args.resume)
    if result["best_val_mAP"] is None:
        print(f"trained {result['steps']} steps without a validation split: best.pt holds the last epoch; "
              f"checkpoints in {config.out}/")
    else:
        print(f"best validation mAP {result['best_val_mAP']:.2f} after {result['steps']} steps; "
              f"checkpoints in {config.out}/")
    if json_path is not None:
        write_json(json_path, {"out": config.out, **result, "config": asdict(config)})
    return 0


def checkpoint_dataset(args: argparse.Namespace) -> tuple[str, str | None, dict]:
    """(dataset name, root, reader options) for ``--checkpoint``: ``--data``/``--data-root``/``--image-root``
    where given, else what the checkpoint recorded, including its held-out validation fraction so that
    ``--split val`` is the split it was selected on."""
    from sigrl.checkpoint import read_checkpoint

    stored = read_checkpoint(args.checkpoint).get("data", {})
    data = args.data or stored.get("name")
    if data is None:
        raise UsageError(f"{args.checkpoint} does not record its dataset: pass --data")
    same_data = data == stored.get("name")
    root = args.data_root or (stored.get("root") if same_data else None)
    options = {"image_root": args.image_root or (stored.get("image_root") if same_data else None)}
    _check_data_flags(data, root, options["image_root"])
    if same_data and stored.get("val_fraction") is not None and data != "synthetic":
        options["val_fraction"] = stored["val_fraction"]
    if args.split == "val" and options.get("val_fraction") == 0:
        raise UsageError(f"{args.checkpoint} was trained on all training images (--val-fraction 0): it has no "
                         "held-out validation split; use --split test or a checkpoint trained with a validation split")
    return data, root, options


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from sigrl.checkpoint import load_checkpoint
    from sigrl.deploy.accuracy import evaluate_runtime
    from sigrl.evaluation import evaluate_dataset, format_report

    json_path = writable_file("--json", args.json) if args.json else None
    kind = check_runtime_arguments(args)
    data, root, options = checkpoint_dataset(args)
    model = load_checkpoint(args.checkpoint)
    if args.class_chunk:
        model.set_class_chunk(args.class_chunk)
    if kind != "torch" or args.precision not in (None, "fp32"):
        runtime = runtime_from_arguments(args, kind, model)
        print(f"scoring with {runtime.name} {runtime.precision} ({runtime.provider})")
        report = evaluate_runtime(runtime, model.prompt_template, model.config.vision_cfg["image_size"], data, root,
                                  args.split, min(args.batch_size, 32), args.workers, progress=True, **options)
    else:  # the paper's protocol: the checkpoint's PyTorch model in fp32
        device = torch_device("--device", args.device) or ("cuda" if torch.cuda.is_available() else "cpu")
        report = evaluate_dataset(model.to(device), data, root, args.split, args.batch_size, device, args.workers,
                                  progress=True, **options)
    print(format_report(report))
    if json_path is not None:
        runtime_record = {"runtime": args.runtime or ("onnxruntime" if args.engines else "torch"),
                          "engines": args.engines, "precision": args.precision}
        write_json(json_path, {"checkpoint": str(args.checkpoint), "data": data, "split": args.split,
                               **runtime_record, "results": report})
        print(f"report written to {json_path}")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from sigrl.factory import create_model
    from sigrl.params import format_parameter_table, parameter_table

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
    evaluate.add_argument("--batch-size", type=positive_int, default=64)
    evaluate.add_argument("--class-chunk", type=positive_int)
    evaluate.add_argument("--workers", type=non_negative_int, default=0)
    add_runtime_arguments(evaluate, "score with these exported engines instead of the checkpoint's PyTorch model")
    evaluate.set_defaults(func=cmd_eval)
    params = commands.add_parser("params", help="print the parameter count table, trainable vs frozen")
    params.add_argument("--config", default="vit-b16", choices=list_models())
    params.set_defaults(func=cmd_params)
