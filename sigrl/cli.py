"""The ``sigrl`` command: train, eval, export, parity, triton-repo, serve, tag (and demo) over one model registry."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
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


def cmd_triton_repo(args: argparse.Namespace) -> int:
    from sigrl.serving.repository import build_repository

    repo = build_repository(Path(args.engines), args.runtime, Path(args.out), max_batch=args.max_batch,
                            overwrite=args.overwrite)
    print(f"Triton model repository ({args.runtime} runtime) written to {repo}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from sigrl.serving.server import TritonServer

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with TritonServer(Path(args.repo), grpc_port=args.grpc_port, http_port=args.http_port, host=args.host) as server:
        print(f"Triton ready: gRPC {server.grpc_url}, HTTP {server.http_url} (Ctrl-C stops it)", flush=True)
        try:
            while not stop.wait(1.0):
                if not server.is_ready():
                    print("Triton is no longer ready; stopping", file=sys.stderr)
                    return 1
        except KeyboardInterrupt:
            pass
        print("stopping Triton ...", flush=True)
    return 0


def _read_thresholds(path: str | None, default: float | None) -> dict[str, float] | float | None:
    """Per-class thresholds from a JSON file ``{label: threshold}``, else the single ``--threshold``."""
    if path is None:
        return default
    values = json.loads(Path(path).read_text())
    if not isinstance(values, dict) or not all(isinstance(v, (int, float)) for v in values.values()):
        raise SystemExit(f"{path} must hold a JSON object {{label: threshold}}")
    return {str(k): float(v) for k, v in values.items()}


def cmd_tag(args: argparse.Namespace) -> int:
    from sigrl.serving.client import SigRLClient

    labels = [name.strip() for name in args.labels.split(",")] if args.labels else None
    thresholds = _read_thresholds(args.thresholds, args.threshold)
    client = SigRLClient(args.url)
    images = []
    for path in args.images:
        try:
            images.append(Path(path).read_bytes())
        except OSError as err:
            raise SystemExit(f"cannot read image {path}: {err}") from err
    for tagging in client.tag(args.images, images, labels, args.top_k):
        ranked = sorted(tagging.scores.items(), key=lambda item: -item[1])
        if isinstance(thresholds, dict):
            default = thresholds.get("*", float("-inf"))
            ranked = [(n, s) for n, s in ranked if s >= thresholds.get(n, default)]
        elif thresholds is not None:
            ranked = [(n, s) for n, s in ranked if s >= thresholds]
        kept = ranked[:args.top_k]
        if args.json:
            print(json.dumps({"image": tagging.image, "scores": tagging.scores,
                              "top": [{"label": n, "score": s} for n, s in kept]}))
        else:
            print(f"{tagging.image}: " + (", ".join(f"{n} ({s:.3f})" for n, s in kept) or "(no label above threshold)"))
    client.close()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole chain on the built-in default: train ``tiny`` on synthetic shapes, evaluate, export,
    serve with Triton, tag images over gRPC, and compare served with in-process scores and latency."""
    from sigrl.data import build_dataset
    from sigrl.deploy.onnx_export import export_checkpoint
    from sigrl.deploy.runtimes import TorchRuntime
    from sigrl.evaluation import evaluate_dataset, format_report
    from sigrl.serving.client import SigRLClient, TritonRuntime
    from sigrl.serving.measure import InProcessTagger, latency, png_bytes
    from sigrl.serving.repository import build_repository
    from sigrl.serving.server import TritonServer
    from sigrl.training import recipe_for, train

    out = Path(args.out)
    config = recipe_for("tiny", out=str(out), max_steps=args.max_steps)
    print(f"[1/5] training 'tiny' on synthetic shapes for {config.epochs} epochs (CPU, a minute or two) ...")
    train(config)
    checkpoint = out / "best.pt"
    model = load_checkpoint(checkpoint)
    print(format_report(evaluate_dataset(model, "synthetic", split="test")))

    print("[2/5] exporting ONNX engines ...")
    export_checkpoint(checkpoint, out / "engines")
    print("[3/5] building the Triton model repository (python runtime: ONNX Runtime inside Triton) ...")
    repo = build_repository(out / "engines", "python", out / "triton_repo", overwrite=True)

    test = build_dataset("synthetic", "test", image_size=model.config.vision_cfg["image_size"], num_images=4)
    images = [png_bytes(image) for image in test.images]
    names = [f"test-{i}.png" for i in range(len(images))]
    print("[4/5] starting Triton and tagging 4 synthetic test images over gRPC ...")
    with TritonServer(repo) as server:
        client = SigRLClient(server.grpc_url)
        for tagging, labels in zip(client.tag(names, images, top_k=4), test.labels):
            truth = [model.vocabulary[c] for c in range(len(labels)) if labels[c] > 0]
            print(f"  {tagging.image}: " + ", ".join(f"{n} ({s:.2f})" for n, s in tagging.top)
                  + f"   | truth: {', '.join(truth)}")

        print("[5/5] served vs in-process ONNX Runtime (same engines, same images):")
        local = InProcessTagger(out / "engines")
        vocabulary = model.vocabulary
        served_scores, _ = client.infer(images, vocabulary)
        local_scores = local.scores(images, vocabulary)
        print(f"  entry model scores, max abs difference: {np.abs(served_scores - local_scores).max():.2e}")
        pixels, token_ids = local.pixels(images), model.tokenize(vocabulary)
        torch_scores = TorchRuntime(model).predict(pixels, token_ids)
        print(f"  vs PyTorch eager, max abs difference:   {np.abs(served_scores - torch_scores).max():.2e}")
        served_engines = TritonRuntime(server.grpc_url).predict(pixels, token_ids)
        print(f"  engine models over gRPC vs in process:  "
              f"{np.abs(served_engines - local.runtime.predict(pixels, token_ids)).max():.2e}")
        one = images[:1]
        served = latency(lambda: client.infer(one, vocabulary), repeats=50)
        in_process = latency(lambda: local.scores(one, vocabulary), repeats=50)
        print(f"  latency of one image, {len(vocabulary)} labels (cached vocabulary), 50 requests: "
              f"served p50 {served['p50_ms']:.1f} ms / p95 {served['p95_ms']:.1f} ms; "
              f"in process p50 {in_process['p50_ms']:.1f} ms / p95 {in_process['p95_ms']:.1f} ms")
        client.close()
    print("Triton stopped. Files in", out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sigrl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train tiny, evaluate, export, serve with Triton, tag over gRPC")
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
    repo = commands.add_parser("triton-repo", help="build a Triton model repository from exported engines")
    repo.add_argument("--engines", required=True, help="folder written by `sigrl export`")
    repo.add_argument("--runtime", default="python", choices=("python", "onnxruntime", "tensorrt"),
                      help="python: ONNX Runtime in python-backend models (runs on the bundled CPU server)")
    repo.add_argument("--out", required=True)
    repo.add_argument("--max-batch", type=int, default=32, help="images per batch of the entry model")
    repo.add_argument("--overwrite", action="store_true", help="replace an existing repository")
    repo.set_defaults(func=cmd_triton_repo)
    serve = commands.add_parser("serve", help="run the Triton server bundled in nvidia-pytriton on a repository")
    serve.add_argument("--repo", required=True)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    serve.add_argument("--grpc-port", type=int, help="default: a free port")
    serve.add_argument("--http-port", type=int, help="default: a free port")
    serve.set_defaults(func=cmd_serve)
    tag = commands.add_parser("tag", help="tag images over gRPC with labels chosen per request")
    tag.add_argument("images", nargs="+", metavar="IMAGE")
    tag.add_argument("--url", default="127.0.0.1:8001", help="gRPC address HOST:PORT")
    tag.add_argument("--labels", help="comma-separated label names (default: the served default vocabulary)")
    tag.add_argument("--top-k", type=int, default=5)
    tag.add_argument("--threshold", type=float, help="only print labels scoring at least this")
    tag.add_argument("--thresholds", help='JSON file {"label": threshold, "*": default} of per-class thresholds')
    tag.add_argument("--json", action="store_true", help="one JSON object per image")
    tag.set_defaults(func=cmd_tag)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as err:  # bad paths and inputs: one clear line, no traceback
        print(f"sigrl {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
