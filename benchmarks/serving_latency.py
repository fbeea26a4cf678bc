"""Served (Triton gRPC) vs in-process ONNX Runtime: p50/p95 latency and throughput of tagging requests.

For each config: random weights are exported (or ``--engines`` is reused), a python-runtime repository
is built, the bundled Triton server is started, and the same request (one PNG image, C labels, the
vocabulary already cached) is timed through ``sigrl``'s entry model and through
:class:`~sigrl.serving.measure.InProcessTagger` (decode + transform + image engine, same engines), the two
in turns so that load on the machine slows both alike.
Throughput is requests/s with ``--concurrency`` client threads. Prints a table; asserts nothing.
Example: ``python benchmarks/serving_latency.py --config tiny vit-b16 --classes 81``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

import sigrl
from sigrl.checkpoint import model_payload, save_atomic
from sigrl.data.synthetic import SyntheticShapes
from sigrl.deploy.onnx_export import export_checkpoint
from sigrl.serving.client import SigRLClient
from sigrl.serving.measure import InProcessTagger, interleaved_latency, png_bytes, throughput
from sigrl.serving.repository import build_repository
from sigrl.serving.server import TritonServer


def measure(config: str, engines: Path | None, work: Path, classes: int, repeats: int, concurrency: int) -> dict:
    if engines is None:
        torch.manual_seed(0)
        save_atomic(model_payload(sigrl.create_model(config), []), work / f"{config}.pt")
        engines = work / f"{config}-engines"
        export_checkpoint(work / f"{config}.pt", engines)
    local = InProcessTagger(engines)
    size = local.runtime.image_spec.image_size
    image = [png_bytes(SyntheticShapes("test", num_images=1, image_size=size).images[0])]
    labels = [f"concept number {i}" for i in range(classes)]
    repo = build_repository(engines, "python", work / f"{config}-repo", overwrite=True)
    with TritonServer(repo) as server:
        client = SigRLClient(server.grpc_url)
        served_scores, _ = client.infer(image, labels)
        parity = float(np.abs(served_scores - local.scores(image, labels)).max())
        timed = interleaved_latency({"served": lambda: client.infer(image, labels),
                                     "local": lambda: local.scores(image, labels)}, repeats)
        served, local_ms = timed["served"], timed["local"]
        clients = [SigRLClient(server.grpc_url) for _ in range(concurrency)]
        served_rps = throughput(lambda: clients[np.random.randint(concurrency)].infer(image, labels),
                                repeats * concurrency, concurrency)
        local_rps = throughput(lambda: local.scores(image, labels), repeats, 1)
        for c in (client, *clients):
            c.close()
    return {"config": config, "served": served, "local": local_ms, "served_rps": served_rps, "local_rps": local_rps,
            "max_abs": parity}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", nargs="+", default=["tiny", "vit-b16"])
    parser.add_argument("--engines", help="reuse exported engines (one config only)")
    parser.add_argument("--classes", type=int, default=81)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    print(f"one image per request, C = {args.classes}, vocabulary cached; throughput with {args.concurrency} "
          "client threads (served) vs one caller (in process)")
    print(f"{'config':<9}| {'served p50':>10}{'p95':>8}{'req/s':>8} | {'in-proc p50':>11}{'p95':>8}{'req/s':>8} |"
          f" {'p50 ratio':>9} | {'max abs':>8}")
    with tempfile.TemporaryDirectory() as work:
        for config in args.config:
            r = measure(config, Path(args.engines) if args.engines else None, Path(work), args.classes, args.repeats,
                        args.concurrency)
            s, loc = r["served"], r["local"]
            print(f"{config:<9}| {s['p50_ms']:>8.1f}ms{s['p95_ms']:>6.1f}ms{r['served_rps']:>8.1f} | "
                  f"{loc['p50_ms']:>9.1f}ms{loc['p95_ms']:>6.1f}ms{r['local_rps']:>8.1f} |"
                  f" {s['p50_ms'] / loc['p50_ms']:>8.2f}x | {r['max_abs']:>8.1e}", flush=True)


if __name__ == "__main__":
    main()
