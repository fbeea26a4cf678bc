"""Export `vit-b16` as ONNX and measure it against PyTorch eager: time, size, latency, peak RSS, parity.

For each vocabulary size C and batch size B, PyTorch eager and ONNX Runtime each run in a fresh
process (so ru_maxrss is that runtime's own peak) on the same inputs: the text engine once, then the
image engine ``--repeats`` times after one warm-up call, reporting the median. The eager process saves
its outputs; the ONNX Runtime process compares against them. Weights are random (no pretrained CLIP is
needed to measure speed and memory); parity on a trained model is what ``tests/test_export.py`` checks.
Prints tables; asserts nothing. Example: ``python benchmarks/onnx_engines.py --classes 81 1006 --batch 1 8``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child_export(config: str, work: Path) -> dict:
    """Save a random-weight checkpoint and export it; returns seconds and bytes per engine."""
    from sigrl.bench import workload
    from sigrl.deploy.onnx_export import export_checkpoint

    report = export_checkpoint(workload.bench_checkpoint(config, work), work / "engines")
    return {name: {"seconds": info["seconds"], "mib": info["bytes"] / 2**20} for name, info in report.items()} | {
        "peak_rss_gb": _peak_rss_gb()}


def child_run(runtime: str, config: str, work: Path, classes: int, batch: int, repeats: int) -> dict:
    """Run one runtime on C classes and B images; eager saves outputs, ONNX Runtime compares with them."""
    import numpy as np

    import sigrl
    from sigrl.bench import workload
    from sigrl.deploy.parity import rel_l2, topk_agreement
    from sigrl.deploy.runtimes import OnnxRuntime, TorchRuntime

    if runtime == "torch":
        rt = TorchRuntime(sigrl.load_checkpoint(work / f"{config}.pt"))
    else:
        rt = OnnxRuntime(work / "engines", device="cpu")
    size = rt.model.config.vision_cfg["image_size"] if runtime == "torch" else rt.image_spec.image_size
    images = workload.pixel_batch(batch, size)
    token_ids = workload.token_ids(classes, sigrl.DEFAULT_TEMPLATE)
    start = time.perf_counter()
    label_emb, graph_emb = rt.encode_labels(token_ids)
    text_s = time.perf_counter() - start
    stem = work / f"eager-C{classes}-B{batch}"
    if runtime != "torch":  # score the eager model's embeddings, so the image engine is compared alone
        label_emb, graph_emb = np.load(f"{stem}-T.npy"), np.load(f"{stem}-G.npy")
    scores = rt.score_images(images, label_emb, graph_emb)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        scores = rt.score_images(images, label_emb, graph_emb)
        times.append(time.perf_counter() - start)
    result = {"text_s": text_s, "image_s": statistics.median(times), "peak_rss_gb": _peak_rss_gb()}
    if runtime == "torch":
        np.save(f"{stem}-T.npy", label_emb), np.save(f"{stem}-G.npy", graph_emb), np.save(f"{stem}-S.npy", scores)
    else:
        reference = np.load(f"{stem}-S.npy")
        result |= {"max_abs": float(np.abs(scores - reference).max()), "rel_l2": rel_l2(reference, scores),
                   "top1": topk_agreement(reference, scores, 1, 0.0), "top5": topk_agreement(reference, scores, 5, 0.0)}
    return result


def _child(*args: str) -> dict:
    run = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="vit-b16")
    parser.add_argument("--classes", type=int, nargs="+", default=[81, 1006])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, work, *rest = args.child
        if kind == "export":
            result = child_export(args.config, Path(work))
        else:
            result = child_run(kind, args.config, Path(work), int(rest[0]), int(rest[1]), args.repeats)
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as work:
        exported = _child("export", work, "--config", args.config)
        print(f"export of {args.config} (random weights), opset 18, dynamo exporter; peak RSS "
              f"{exported.pop('peak_rss_gb'):.2f} GB")
        for name, info in exported.items():
            print(f"  {name}: {info['seconds']:.1f} s, {info['mib']:.1f} MiB")
        print(f"\n{'C':>5}{'B':>3} | {'eager text s':>12}{'image s':>9}{'RSS GB':>8} | {'ORT text s':>10}{'image s':>9}"
              f"{'RSS GB':>8} | {'speed-up':>8} | {'max abs':>9}{'rel L2':>9}{'top-1':>6}{'top-5':>6}")
        for classes in args.classes:
            for batch in args.batch:
                sizes = [str(classes), str(batch), "--config", args.config, "--repeats", str(args.repeats)]
                eager, ort = _child("torch", work, *sizes), _child("onnxruntime", work, *sizes)
                print(f"{classes:>5}{batch:>3} | {eager['text_s']:>12.2f}{eager['image_s']:>9.2f}"
                      f"{eager['peak_rss_gb']:>8.2f}"
                      f" | {ort['text_s']:>10.2f}{ort['image_s']:>9.2f}{ort['peak_rss_gb']:>8.2f}"
                      f" | {eager['image_s'] / ort['image_s']:>7.2f}x | {ort['max_abs']:>9.1e}{ort['rel_l2']:>9.1e}"
                      f"{ort['top1']:>6.2f}{ort['top5']:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
