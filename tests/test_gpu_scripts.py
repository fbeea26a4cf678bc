"""The prepared GPU scripts run end to end on a CPU (``--device cpu``): every step a CPU has executes, the
CUDA- and TensorRT-only ones are reported as skipped with the reason, and the JSON they write has the
schema the README tables are filled from. A call on a lent GPU then cannot fail on a device mix-up, an
import, a path or the JSON. Timings are printed by the scripts, never asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sigrl.bench.results import load_results

REPO_ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--repeats", "2", "--compile-backend", "aot_eager"]  # aot_eager: compile traces, skips code generation


def run_script(script: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / script), *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.slow
def test_gpu_tensorrt_check_runs_every_cpu_step(trained_tiny, tmp_path):
    """fp16 (a plain float export) and fp8 (calibrated Q/DQ at opset 22) stand for the five precisions here;
    tests/test_precision.py exports all of them."""
    report_path = tmp_path / "check.json"
    result = run_script("gpu_tensorrt_check.py", "--device", "cpu", "--configs", "tiny", "--tiny-checkpoint",
                        str(trained_tiny[0] / "best.pt"), "--precisions", "fp16", "fp8", "--classes", "12",
                        "--batch", "2", "--eval-images", "32", *QUICK, "--json", str(report_path))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert (report["schema"], report["device"], report["tensorrt"]) == ("sigrl.gpu-check/1", "cpu", None)
    assert "CUDA device" in report["tensorrt_missing"]
    steps = {step["step"]: step for step in report["steps"]}
    assert [name for name, step in steps.items() if step["status"] == "failed"] == []
    skipped = {name for name, step in steps.items() if step["status"] == "skipped"}
    assert skipped == {f"{what} tiny {p}" for what in ("build plans", "plans: parity, ΔmAP, latency")
                       for p in ("fp16", "fp8")}
    assert all("TensorRT plans need a CUDA device" in steps[name]["reason"] for name in skipped)

    timings = steps["torch timings (tiny)"]["result"]
    assert {(r["precision"], r["case"]) for r in timings["rows"]} == {("fp32", ""), ("bf16", ""),
                                                                      ("bf16", "torch.compile")}
    assert any("cuda-graph" in note and "need a CUDA device" in note for note in timings["notes"])
    numerics = steps["torch numerics fp16/bf16 (tiny)"]["result"]
    for precision in ("fp16", "bf16"):  # what the numbers are is the script's to report, not this test's
        summary = numerics[precision]
        assert summary["precision"] == [precision] and isinstance(summary["passed"], bool)
        assert set(summary["stages"]) == {"text_gmc:label_emb", "text_gmc:graph_emb", "image_svfr:scores",
                                          "pipeline:scores"}
        assert summary["delta_mAP"] == pytest.approx(summary["mAP"] - numerics["fp32_mAP"])
    for precision in ("fp16", "fp8"):
        exported = steps[f"export tiny {precision}"]["result"]
        assert {name: info["precision"] for name, info in exported.items()} == {"text_gmc": "fp16",
                                                                                "image_svfr": precision}
        assert all(info["loops"] == 2 for info in exported.values())
        assert steps[f"TensorRT readiness tiny {precision}"]["result"] == {"text_gmc": [], "image_svfr": []}
    assert "0 failed" in result.stdout


def test_gpu_scripts_need_a_gpu_unless_told_cpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the default run would start")
    check = run_script("gpu_tensorrt_check.py", "--json", str(tmp_path / "x.json"), timeout=300)
    assert check.returncode == 2 and "--device cpu" in check.stderr
    bench = run_script("gpu_bench.py", "--out", str(tmp_path / "bench"), timeout=300)
    assert bench.returncode == 1 and "--device cpu" in bench.stderr


@pytest.mark.slow
def test_gpu_bench_runs_every_cpu_step(tmp_path):
    out = tmp_path / "bench"
    result = run_script("gpu_bench.py", "--device", "cpu", "--config", "tiny", "--classes", "12", "--batch", "1", "2",
                        "--text-classes", "12", "--train-batch", "2", "--train-classes", "12", *QUICK,
                        "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    results = load_results(out / "results.json")
    cases = {(r.engine, r.precision, r.case, r.batch) for r in results["rows"]}
    assert cases == {("image_svfr", "fp32", "", 1), ("image_svfr", "bf16", "", 1), ("image_svfr", "fp32", "", 2),
                     ("image_svfr", "bf16", "", 2), ("image_svfr", "bf16", "torch.compile", 2),
                     ("text_gmc", "fp32", "", 1), ("text_gmc", "bf16", "", 1),
                     ("train_step", "fp32", "checkpointing", 2)}
    assert all(r.provider == "cpu" and r.source == "gpu_bench" for r in results["rows"])
    assert sum("cuda-graph" in note and "need a CUDA device" in note for note in results["notes"]) == 2
    assert (out / "report.md").is_file()
