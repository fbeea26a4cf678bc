"""GPU check of the TensorRT layer: one call, meant to finish in under 8 minutes, nothing downloaded.

With TensorRT and a GPU: for ``tiny`` and ``vit-b16`` (random weights; parity on a trained model is what
``tests/test_tensorrt.py`` checks), export the engines at ``--precision`` (fp16 by default, where this
sigrl's exporter has ``precision``; otherwise fp32, and the report says so), build both plans with the
library behind ``sigrl build-engines``, compare them with PyTorch eager fp32 on the same GPU through
``compare_runtimes`` at the plans' precision, and time both (median milliseconds per call).

With a GPU but no TensorRT: the same models in PyTorch CUDA under autocast fp16 and bf16, compared with
fp32, reported as a PROXY for the drift of the reduced-precision graphs, not as a TensorRT result.
Prints a table and writes JSON (``--json``); asserts nothing; exits 2 without a GPU.

Example: ``python benchmarks/gpu_tensorrt_check.py --json results/gpu_tensorrt.json``
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import sigrl
from sigrl.deploy.parity import TOLERANCES, compare_runtimes, parity_inputs
from sigrl.deploy.runtimes import EngineRuntime, TorchRuntime


class AutocastRuntime(TorchRuntime):
    """PyTorch eager under CUDA autocast: the proxy for a reduced-precision graph where TensorRT is absent."""

    def __init__(self, model: sigrl.SigRL, dtype: torch.dtype) -> None:
        super().__init__(model, "cuda")
        self.dtype = dtype

    def _encode_labels(self, token_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.autocast("cuda", dtype=self.dtype):
            return super()._encode_labels(token_ids)

    def _score_images(self, images: np.ndarray, label_emb: np.ndarray, graph_emb: np.ndarray) -> np.ndarray:
        with torch.autocast("cuda", dtype=self.dtype):
            return super()._score_images(images, label_emb, graph_emb)


def median_ms(call: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``call`` after one warm-up (the runtimes return host arrays, so each call syncs)."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def timings(runtime: EngineRuntime, token_ids: np.ndarray, images: np.ndarray, repeats: int) -> dict[str, float]:
    label_emb, graph_emb = runtime.encode_labels(token_ids)
    return {"text_ms": median_ms(lambda: runtime.encode_labels(token_ids), repeats),
            "image_ms": median_ms(lambda: runtime.score_images(images, label_emb, graph_emb), repeats)}


def export_engines(model: sigrl.SigRL, out: Path, precision: str) -> str:
    """Export at ``precision`` where the exporter supports it; returns the precision actually exported."""
    from sigrl.deploy.onnx_export import export_model

    if "precision" in inspect.signature(export_model).parameters:
        export_model(model, out, precision=precision)
        return precision
    export_model(model, out)
    return "fp32"


def candidates(name: str, model: sigrl.SigRL, work: Path, precision: str) -> list[tuple[EngineRuntime, str, str, dict]]:
    """(runtime, precision, kind, build facts) to compare with PyTorch eager fp32."""
    if importlib.util.find_spec("tensorrt") is None:
        return [(AutocastRuntime(model, dtype), label, "PROXY: PyTorch CUDA autocast (no TensorRT here)", {})
                for dtype, label in ((torch.float16, "fp16"), (torch.bfloat16, "bf16"))]
    from sigrl.deploy.runtimes import TensorRTRuntime
    from sigrl.deploy.tensorrt import BuildOptions, build_plans

    start = time.perf_counter()
    exported = export_engines(model, work / name / "engines", precision)
    export_s = time.perf_counter() - start
    options = BuildOptions(timing_cache=work / "timing.cache")
    record = build_plans(work / name / "engines", work / name / "plans", options)
    facts = {"exported_precision": exported, "export_s": round(export_s, 1), "tensorrt": record.tensorrt_version,
             "build_s": {n: b.build_seconds for n, b in record.engines.items()},
             "plan_mib": {n: round(b.plan_bytes / 2**20, 1) for n, b in record.engines.items()},
             "class_chunk": record.engines["image_svfr"].class_chunk}
    return [(TensorRTRuntime(work / name / "plans"), record.precision, "TensorRT plan", facts)]


def check(name: str, work: Path, args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(0)
    model = sigrl.create_model(name)
    size = model.config.vision_cfg["image_size"]
    (token_ids,), (images,) = parity_inputs([], model.prompt_template, size, [args.classes], [args.batch])
    reference = TorchRuntime(model, "cuda")
    eager = timings(reference, token_ids, images, args.repeats)
    results = []
    for runtime, precision, kind, facts in candidates(name, model, work, args.precision):
        tolerance = precision if precision in TOLERANCES else "fp16"
        rows = compare_runtimes(reference, runtime, [token_ids], [images], precision=tolerance)
        results.append({
            "config": name, "kind": kind, "precision": precision, "tolerance": tolerance, "classes": args.classes,
            "batch": args.batch, "passed": all(r.passed for r in rows), **facts,
            "max_abs": {r.stage: r.max_abs for r in rows}, "top1": min(r.top1 for r in rows if r.top1 is not None),
            "eager_fp32": eager, "candidate": timings(runtime, token_ids, images, args.repeats)})
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "vit-b16"])
    parser.add_argument("--precision", default="fp16", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--classes", type=int, default=81)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--budget-s", type=float, default=360, help="start no further config after this many seconds")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU visible: nothing to check", file=sys.stderr)
        return 2
    start = time.perf_counter()
    capability = ".".join(map(str, torch.cuda.get_device_capability()))
    report = {"gpu": torch.cuda.get_device_name(), "compute_capability": capability, "torch": torch.__version__,
              "cuda": torch.version.cuda, "results": [], "skipped": []}
    with tempfile.TemporaryDirectory(prefix="sigrl-trt-") as work:
        for name in args.configs:
            if time.perf_counter() - start > args.budget_s:
                report["skipped"].append(f"{name}: over the {args.budget_s:.0f} s budget")
                continue
            report["results"] += check(name, Path(work), args)
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(f"{report['gpu']} (sm {report['compute_capability']}), torch {report['torch']}, CUDA {report['cuda']}")
    print(f"{'config':<9}{'kind':<48}{'prec':>5}{'ok':>4}{'scores max abs':>16}{'text ms':>17}{'image ms':>17}")
    for r in report["results"]:
        eager, cand = r["eager_fp32"], r["candidate"]
        print(f"{r['config']:<9}{r['kind']:<48}{r['precision']:>5}{'yes' if r['passed'] else 'NO':>4}"
              f"{r['max_abs']['pipeline:scores']:>16.2e}{cand['text_ms']:>8.2f} ({eager['text_ms']:>6.2f})"
              f"{cand['image_ms']:>8.2f} ({eager['image_ms']:>6.2f})")
    print("(in parentheses: PyTorch eager fp32 on the same GPU)", *report["skipped"], f"total {report['seconds']} s",
          sep="\n")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
