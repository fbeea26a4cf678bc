"""The one prepared GPU call: what a GPU can tell about sigrl's engines, in one run and one JSON.

Made for a GPU lent for minutes: one command, about 8 minutes at most (``--budget-s``), nothing
downloaded. Every step runs in turn and is recorded as ok, skipped (with the reason) or failed (with the
error) with its seconds; a failed step never ends the run, a step that would start past the budget is
skipped, and the JSON is rewritten after every step, so a run cut short keeps what it measured.
``--device cpu`` runs every step that exists on a CPU (CI does, so a GPU call cannot fail on a device
mix-up, an import, a path or the JSON schema).

1. ``torch``: the image engine of the largest ``--configs`` entry (random weights) at each ``--classes``
   and ``--batch``: eager fp32, eager bf16, ``torch.compile`` bf16 and a CUDA graph (CUDA only), as
   ``gpu_bench.py`` measures them; then the reduced-precision model's numerics on the device: PyTorch
   fp16 and bf16 (cast model) against fp32, and their ΔmAP on the trained ``tiny``.
2. ``tensorrt``, per config (``tiny``: a trained checkpoint, ``--tiny-checkpoint`` or trained here;
   ``vit-b16``: random weights) and ``--precisions``: export (CPU; int8-qdq and fp8 calibrated on
   synthetic images, or ``--calibration-images``), TensorRT readiness check (CPU), build the plans,
   parity against PyTorch fp32 on the device, ΔmAP through the plans (``tiny``), and median latency of
   both engines against eager fp32. Build and everything after it are skipped with the reason where
   TensorRT or a GPU is missing.

Writes ``--json`` (schema ``sigrl.gpu-check/1``: machine, device, tensorrt, steps, seconds) and prints one
line per step and a summary. Asserts nothing. On a GPU server:
``python benchmarks/gpu_tensorrt_check.py --json gpu-check.json``; in CI:
``python benchmarks/gpu_tensorrt_check.py --device cpu --configs tiny --json OUT``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from gpu_bench import image_rows, timed

import sigrl
from sigrl.bench.results import machine_record
from sigrl.checkpoint import load_checkpoint
from sigrl.deploy.accuracy import evaluate_runtime
from sigrl.deploy.engines import ImageSVFREngine, TextGMCEngine
from sigrl.deploy.onnx_export import export_model
from sigrl.deploy.parity import ParityRow, compare_runtimes, parity_inputs
from sigrl.deploy.quantization import write_synthetic_images
from sigrl.deploy.runtimes import EngineRuntime, TorchRuntime
from sigrl.deploy.tensorrt import PLAN_PRECISIONS, BuildOptions, TensorRTUnavailable, build_plans, import_tensorrt
from sigrl.deploy.tensorrt_check import tensorrt_problems
from sigrl.model import SigRL

SCHEMA = "sigrl.gpu-check/1"
PRECISIONS = ("fp16", "fp8", "int8-qdq", "bf16", "fp32")  # most wanted first: the budget may end the list
TORCH_PRECISIONS = ("fp16", "bf16")


class Steps:
    """Runs named steps, records each (ok / skipped / failed, seconds, result) and rewrites the JSON after it."""

    def __init__(self, report: dict[str, Any], json_path: Path | None, budget_s: float) -> None:
        self.report, self.json_path, self.budget_s = report, json_path, budget_s
        self.started = time.perf_counter()

    def run(self, name: str, step: Callable[[], Any], skip: str | None = None) -> Any:
        """``step()``'s result, or None when it is skipped (``skip``: the reason) or fails."""
        if skip is None and time.perf_counter() - self.started > self.budget_s:
            skip = f"over the {self.budget_s:.0f} s budget"
        record: dict[str, Any] = {"step": name, "status": "skipped", "reason": skip, "seconds": 0.0, "result": None}
        if skip is None:
            start = time.perf_counter()
            try:
                record.update(status="ok", result=step())
            except Exception as err:
                record.update(status="failed", reason=f"{type(err).__name__}: {err}",
                              traceback=traceback.format_exc().splitlines()[-12:])
            record["seconds"] = round(time.perf_counter() - start, 2)
        self.report["steps"].append(record)
        self.report["seconds"] = round(time.perf_counter() - self.started, 1)
        print(f"[{record['seconds']:7.1f} s] {record['status']:<7} {name}"
              + (f": {record['reason']}" if record["reason"] else ""), flush=True)
        if self.json_path is not None:
            self.json_path.write_text(json.dumps(self.report, indent=2, default=str))
        return record["result"]


def tensorrt_missing(device: torch.device) -> str | None:
    """Why TensorRT plans cannot be built and run here (None when they can)."""
    if device.type != "cuda":
        return f"TensorRT plans need a CUDA device (this run is on {device})"
    try:
        import_tensorrt()
    except TensorRTUnavailable as err:
        return str(err)
    return None


def parity_summary(rows: list[ParityRow]) -> dict[str, Any]:
    """Worst error per stage, worst top-k agreement, and the verdict at the candidate's tolerances."""
    stages: dict[str, dict[str, float]] = {}
    for r in rows:
        worst = stages.setdefault(r.stage, {"max_abs": 0.0, "rel_l2": 0.0})
        worst["max_abs"], worst["rel_l2"] = max(worst["max_abs"], r.max_abs), max(worst["rel_l2"], r.rel_l2)
    top = [r for r in rows if r.top1 is not None]
    return {"precision": sorted({r.precision for r in rows}), "passed": all(r.passed for r in rows), "stages": stages,
            "top1": min(r.top1 for r in top), "top5": min(r.top5 for r in top)}


def synthetic_map(runtime: EngineRuntime, model: SigRL, images: int) -> float:
    """mAP (percent) of ``runtime`` on the first ``images`` synthetic test images."""
    report = evaluate_runtime(runtime, model.prompt_template, model.config.vision_cfg["image_size"], "synthetic",
                              split="test", num_images=images)
    return next(iter(report.values()))["mAP"]


def median_ms(call: Callable[[], object], repeats: int, device: torch.device) -> float:
    return statistics.median(timed(call, repeats, device)) * 1e3


def latency(runtime: EngineRuntime, token_ids: np.ndarray, images: np.ndarray, repeats: int,
            device: torch.device) -> dict[str, float]:
    """Median milliseconds of one call of each engine (host arrays in and out, as a server sees them)."""
    label_emb, graph_emb = runtime.encode_labels(token_ids)
    return {"text_ms": median_ms(lambda: runtime.encode_labels(token_ids), repeats, device),
            "image_ms": median_ms(lambda: runtime.score_images(images, label_emb, graph_emb), repeats, device)}


class Check:
    """The steps of one run, sharing the device, the work folder and the options."""

    def __init__(self, args: argparse.Namespace, steps: Steps, work: Path) -> None:
        self.args, self.steps, self.work = args, steps, work
        self.device = torch.device(args.device)
        self.trt_missing = tensorrt_missing(self.device)

    def model(self, config: str) -> SigRL:
        """A fresh CPU model: the trained tiny where there is one, random weights (seed 0) otherwise."""
        checkpoint = self.args.tiny_checkpoint if config == "tiny" else None
        if checkpoint is not None:
            return load_checkpoint(checkpoint)
        torch.manual_seed(0)
        return sigrl.create_model(config)

    def inputs(self, model: SigRL) -> tuple[np.ndarray, np.ndarray]:
        (token_ids,), (images,) = parity_inputs(model.vocabulary or [], model.prompt_template,
                                                model.config.vision_cfg["image_size"], [self.args.classes[0]],
                                                [self.args.batch[0]])
        return token_ids, images

    def train_tiny(self) -> dict[str, str]:
        """Train the tiny recipe on the device when no --tiny-checkpoint was given (ΔmAP needs a trained model)."""
        from sigrl.training import recipe_for, train

        out = self.work / "tiny-run"
        train(recipe_for("tiny", out=str(out), progress=False, device=self.args.device))
        self.args.tiny_checkpoint = str(out / "best.pt")
        return {"checkpoint": self.args.tiny_checkpoint}

    def torch_timings(self, config: str) -> dict[str, Any]:
        model = self.model(config).to(self.device).eval()
        notes: list[str] = []
        rows = [asdict(r) for classes in self.args.classes
                for r in image_rows(model, classes, self.args.batch, self.args.repeats, notes, self.device,
                                    self.args.compile_backend)]
        return {"config": config, "rows": rows, "notes": notes}

    def torch_numerics(self, config: str) -> dict[str, Any]:
        """PyTorch at fp16 and bf16 on the device against fp32 on the device (and ΔmAP for a trained model)."""
        model = self.model(config)
        reference = TorchRuntime(model, self.device)
        token_ids, images = self.inputs(model)
        result: dict[str, Any] = {"config": config}
        trained = self.args.tiny_checkpoint is not None and config == "tiny"
        base = synthetic_map(reference, model, self.args.eval_images) if trained else None
        for precision in TORCH_PRECISIONS:
            candidate = TorchRuntime(model, self.device, precision)
            result[precision] = parity_summary(compare_runtimes(reference, candidate, [token_ids], [images]))
            if trained:
                result[precision]["mAP"] = synthetic_map(candidate, model, self.args.eval_images)
                result[precision]["delta_mAP"] = result[precision]["mAP"] - base
        result["fp32_mAP"] = base
        return result

    def export(self, config: str, precision: str) -> dict[str, Any]:
        model = self.model(config)
        calibration = None
        if precision in ("int8-qdq", "fp8"):
            size = model.config.vision_cfg["image_size"]
            calibration = self.args.calibration_images or write_synthetic_images(self.work / f"calibration-{size}",
                                                                                 size)
        report = export_model(model, self.work / config / precision / "engines", precision=precision,
                              calibration_images=calibration)
        return {name: {k: str(v) if k == "path" else v for k, v in info.items()} for name, info in report.items()}

    def readiness(self, config: str, precision: str) -> dict[str, list[str]]:
        folder = self.work / config / precision / "engines"
        problems = {spec.name: tensorrt_problems(onnx.load(str(folder / spec.file_name)))
                    for spec in (TextGMCEngine, ImageSVFREngine)}
        if any(problems.values()):
            raise ValueError(f"TensorRT readiness problems: {problems}")
        return problems

    def build(self, config: str, precision: str) -> dict[str, Any]:
        options = BuildOptions(timing_cache=self.work / "timing.cache",
                               builder_optimization_level=self.args.builder_optimization_level)
        record = build_plans(self.work / config / precision / "engines", self.work / config / precision / "plans",
                             options)
        return {"tensorrt": record.tensorrt_version, "gpu": record.gpu_name,
                "engines": {n: {"build_s": b.build_seconds, "plan_mib": round(b.plan_bytes / 2**20, 1),
                                "loops": b.loops, "precision": b.precision} for n, b in record.engines.items()}}

    def plans(self, config: str, precision: str) -> dict[str, Any]:
        """Parity, ΔmAP (trained tiny) and latency of the plans against eager fp32 on the same device."""
        from sigrl.deploy.runtimes import TensorRTRuntime

        model = self.model(config)
        reference = TorchRuntime(model, self.device)
        runtime = TensorRTRuntime(self.work / config / precision / "plans", device=str(self.device))
        token_ids, images = self.inputs(model)
        result = {"parity": parity_summary(compare_runtimes(reference, runtime, [token_ids], [images])),
                  "plan": latency(runtime, token_ids, images, self.args.repeats, self.device),
                  "eager_fp32": latency(reference, token_ids, images, self.args.repeats, self.device)}
        if self.args.tiny_checkpoint is not None and config == "tiny":
            result["mAP"] = synthetic_map(runtime, model, self.args.eval_images)
            result["delta_mAP"] = result["mAP"] - synthetic_map(reference, model, self.args.eval_images)
        return result

    def capability_missing(self, precision: str) -> str | None:
        """Why this GPU cannot build ``precision`` plans (bf16: Ampere and newer, fp8: Ada/Hopper and newer)."""
        need = PLAN_PRECISIONS[precision]
        have = torch.cuda.get_device_capability(self.device)
        if have < need:
            return f"{precision} plans need compute capability {need[0]}.{need[1]}; this GPU has {have[0]}.{have[1]}"
        return None

    def run(self) -> None:
        run, configs = self.steps.run, self.args.configs
        if "tiny" in configs and self.args.tiny_checkpoint is None:
            run("train tiny (the recipe, on the device)", self.train_tiny)
        run(f"torch timings ({configs[-1]})", lambda: self.torch_timings(configs[-1]))
        for config in configs:
            run(f"torch numerics fp16/bf16 ({config})", partial(self.torch_numerics, config))
        for config in configs:
            for precision in self.args.precisions:
                label = f"{config} {precision}"
                exported = run(f"export {label}", partial(self.export, config, precision))
                missing = None if exported else "the export did not succeed"
                run(f"TensorRT readiness {label}", partial(self.readiness, config, precision), skip=missing)
                missing = missing or self.trt_missing or self.capability_missing(precision)
                built = run(f"build plans {label}", partial(self.build, config, precision), skip=missing)
                run(f"plans: parity, ΔmAP, latency {label}", partial(self.plans, config, precision),
                    skip=missing or (None if built else "the plans were not built"))


def summary(report: dict[str, Any]) -> str:
    counts = {status: sum(s["status"] == status for s in report["steps"]) for status in ("ok", "skipped", "failed")}
    machine = report["machine"]
    lines = [f"{(machine['gpu'] or {}).get('name') or machine['cpu']}: {counts['ok']} ok, {counts['skipped']} "
             f"skipped, {counts['failed']} failed in {report['seconds']} s"]
    for step in report["steps"]:
        result = step["result"] or {}
        if step["status"] == "ok" and "parity" in result:
            parity, plan, eager = result["parity"], result["plan"], result["eager_fp32"]
            scores = max(v["max_abs"] for k, v in parity["stages"].items() if k.endswith("scores"))
            delta = f", ΔmAP {result['delta_mAP']:+.2f}" if "delta_mAP" in result else ""
            lines.append(f"  {step['step']}: scores max abs {scores:.2e}, top-1 {parity['top1']:.2f}{delta}; "
                         f"image {plan['image_ms']:.2f} ms (eager fp32 {eager['image_ms']:.2f}), "
                         f"text {plan['text_ms']:.2f} ms (eager fp32 {eager['text_ms']:.2f})")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (the run this is for) or cpu (CI: every step a CPU has)")
    parser.add_argument("--configs", nargs="+", default=["tiny", "vit-b16"])
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--tiny-checkpoint", help="a trained tiny checkpoint (default: train the recipe here first)")
    parser.add_argument("--calibration-images", help="folder of images for int8-qdq/fp8 (default: synthetic images)")
    parser.add_argument("--classes", type=int, nargs="+", default=[81, 1006], help="C of timings (parity: the first)")
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 64], help="B of timings (parity: the first)")
    parser.add_argument("--eval-images", type=int, default=500, help="synthetic test images for ΔmAP")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend (a CPU check may pass aot_eager to trace without code generation)")
    parser.add_argument("--builder-optimization-level", type=int, help="TensorRT builder level (default its own, 3)")
    parser.add_argument("--budget-s", type=float, default=420, help="start no step after this many seconds")
    parser.add_argument("--json", help="write the report here (rewritten after every step)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device visible: run with --device cpu for the CPU steps", file=sys.stderr)
        return 2
    json_path = Path(args.json) if args.json else None
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"schema": SCHEMA, "device": str(device), "machine": machine_record(),
                              "options": {k: v for k, v in vars(args).items() if k != "json"}, "steps": [],
                              "seconds": 0.0}
    with tempfile.TemporaryDirectory(prefix="sigrl-gpu-check-") as work:
        check = Check(args, Steps(report, json_path, args.budget_s), Path(work))
        report["tensorrt"] = None if check.trt_missing else import_tensorrt().__version__
        report["tensorrt_missing"] = check.trt_missing
        check.run()
    print(summary(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
