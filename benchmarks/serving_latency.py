"""Served (Triton gRPC) vs in-process ONNX Runtime: p50/p95 latency and throughput of tagging requests.

For each config: random weights are exported (or ``--engines`` is reused), one python-runtime repository
is built per ``--entry-engines`` mode (``local``: the entry model runs the engines in its own sessions;
``bls``: it calls the engine models), a bundled Triton server is started for each, and the same request
(one PNG image, C labels, the vocabulary already cached) is timed, all in turns so that load on the
machine slows them alike, through:

* ``served <mode>``: ``sigrl``'s entry model (decode, transform, image engine);
* ``engine hop``: the ``image_svfr`` engine model called directly with the pixels: gRPC and one
  python-backend hop around the engine, no decoding (what any python-backend model costs at least);
* ``in process``: :class:`~sigrl.serving.measure.InProcessTagger` (decode + transform + image engine,
  same engines) and its engine alone.

Throughput is requests/s with ``--concurrency`` client threads (served) vs one caller (in process).
Prints a table; asserts nothing.
Example: ``python benchmarks/serving_latency.py --config tiny --classes 12 --repeats 200``.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

import numpy as np

from sigrl.bench import workload
from sigrl.registry import ENTRY_ENGINES
from sigrl.serving.client import SigRLClient
from sigrl.serving.measure import InProcessTagger, interleaved_latency, throughput
from sigrl.serving.repository import build_repository
from sigrl.serving.server import TritonServer
from sigrl.serving.triton_runtime import TritonRuntime
from sigrl.tokenizer import tokenize


def measure(config: str, engines: Path | None, work: Path, classes: int, repeats: int, concurrency: int,
            modes: list[str]) -> dict:
    if engines is None:
        engines = workload.engines_dir(workload.bench_checkpoint(config, work), "fp32")
    local = InProcessTagger(engines)
    image = workload.png_images(1, local.runtime.image_spec.image_size)
    labels = workload.vocabulary(classes)
    pixels = local.pixels(image)
    embeddings = local.runtime.encode_labels(tokenize(labels, local.template).numpy())
    with contextlib.ExitStack() as stack:
        clients, parity = {}, {}
        for mode in modes:
            repo = build_repository(engines, "python", work / f"{config}-{mode}-repo", overwrite=True,
                                    entry_engines=mode)
            server = stack.enter_context(TritonServer(repo))
            clients[mode] = [SigRLClient(server.grpc_url) for _ in range(concurrency)]
            stack.callback(lambda cs=clients[mode]: [c.close() for c in cs])
            parity[mode] = float(np.abs(clients[mode][0].infer(image, labels)[0] - local.scores(image, labels)).max())
        hop = TritonRuntime(server.grpc_url)
        calls = {f"served {mode}": (lambda c=clients[mode][0]: c.infer(image, labels)) for mode in modes}
        calls |= {"engine hop": lambda: hop.score_images(pixels, *embeddings),
                  "in process": lambda: local.scores(image, labels),
                  "in-process engine": lambda: local.runtime.score_images(pixels, *embeddings)}
        timed = interleaved_latency(calls, repeats)
        rps = {f"served {mode}": throughput(lambda cs=clients[mode]: cs[np.random.randint(concurrency)].infer(
            image, labels), repeats * concurrency, concurrency) for mode in modes}
        rps["in process"] = throughput(lambda: local.scores(image, labels), repeats, 1)
    return {"config": config, "latency": timed, "rps": rps, "max_abs": parity}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", nargs="+", default=["tiny", "vit-b16"])
    parser.add_argument("--engines", help="reuse exported engines (one config only)")
    parser.add_argument("--classes", type=int, default=81)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--entry-engines", nargs="+", choices=ENTRY_ENGINES, default=list(ENTRY_ENGINES))
    args = parser.parse_args()
    print(f"one image per request, C = {args.classes}, vocabulary cached, timed in turns; throughput with "
          f"{args.concurrency} client threads (served) vs one caller (in process)")
    with tempfile.TemporaryDirectory() as work:
        for config in args.config:
            r = measure(config, Path(args.engines) if args.engines else None, Path(work), args.classes, args.repeats,
                        args.concurrency, args.entry_engines)
            base = r["latency"]["in process"]["p50_ms"]
            print(f"\n{config}\n{'path':<18}| {'p50':>8} {'p95':>8} | {'p50 - in process':>16} | {'req/s':>7} |"
                  f" {'max abs vs in process':>21}")
            for name, t in r["latency"].items():
                mode = name.removeprefix("served ")
                parity = f"{r['max_abs'][mode]:.1e}" if mode in r["max_abs"] else ""
                rps = f"{r['rps'][name]:.1f}" if name in r["rps"] else ""
                print(f"{name:<18}| {t['p50_ms']:>6.2f}ms {t['p95_ms']:>6.2f}ms | {t['p50_ms'] - base:>+14.2f}ms |"
                      f" {rps:>7} | {parity:>21}", flush=True)


if __name__ == "__main__":
    main()
