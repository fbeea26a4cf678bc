"""Serving commands: ``triton-repo``, ``serve``, ``tag``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def cmd_triton_repo(args: argparse.Namespace) -> int:
    from sigrl.serving.repository import build_repository

    repo = build_repository(Path(args.engines), args.runtime, Path(args.out), max_batch=args.max_batch,
                            overwrite=args.overwrite, plans=[Path(p) for p in args.plans],
                            ort_tensorrt=args.ort_tensorrt, ort_tensorrt_cache=args.ort_tensorrt_cache)
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



def register(commands: argparse._SubParsersAction) -> None:
    """Add ``triton-repo``, ``serve`` and ``tag`` to the ``sigrl`` parser."""
    repo = commands.add_parser("triton-repo", help="build a Triton model repository from exported engines")
    repo.add_argument("--engines", required=True, help="folder written by `sigrl export`")
    repo.add_argument("--runtime", default="python", choices=("python", "onnxruntime", "tensorrt"),
                      help="python: ONNX Runtime in python-backend models (runs on the bundled CPU server)")
    repo.add_argument("--out", required=True)
    repo.add_argument("--max-batch", type=int, default=32, help="images per batch of the entry model")
    repo.add_argument("--overwrite", action="store_true", help="replace an existing repository")
    repo.add_argument("--plans", nargs="+", default=[], metavar="DIR",
                      help="tensorrt: `sigrl build-engines` folders, one per compute capability (default: --engines)")
    repo.add_argument("--ort-tensorrt", choices=("FP32", "FP16", "BF16", "INT8"), metavar="PRECISION_MODE",
                      help="onnxruntime: ONNX Runtime's TensorRT accelerator, FP32|FP16|BF16|INT8 (FP32: graph types)")
    repo.add_argument("--ort-tensorrt-cache", metavar="DIR", help="--ort-tensorrt engine cache folder on the server")
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
