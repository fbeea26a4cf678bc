"""``sigrl bench`` tooling on small hand-made inputs: results schema, pytest-benchmark and perf_analyzer
parsing, report ratios, plots, --compare, the CLI's errors, FLOP counting; and one quick real run."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest
import torch

from sigrl.bench import perf_analyzer as pa
from sigrl.bench.flops import count_gflop, gemm_roofline, onnxruntime_gemm_roofline, roofline_for
from sigrl.bench.report import compare, render_report, write_plots
from sigrl.bench.results import Row, load_results, new_results, rows_from_pytest_benchmark, save_results
from sigrl.cli import bench as bench_cli
from sigrl.cli import main

MACHINE = {"cpu": "Test CPU", "cores": 2, "torch_threads": 2, "ram_gb": 8.0, "platform": "Linux", "python": "3.11",
           "libraries": {"torch": "2.13.0"}, "gpu": None}


def row(runtime: str, precision: str, engine: str, p50: float, **kw) -> Row:
    fields = {"batch": 1, "classes": 81, "p95_ms": p50 * 1.5, "throughput": 1e3 / p50, "unit": "img/s",
                  "source": "pytest-benchmark", "gflop": 1.0}
    fields.update(kw)
    return Row(runtime, precision, engine, p50_ms=p50, **fields)


def results_with(rows: list[Row]) -> dict:
    doc = new_results("tiny", MACHINE, {"fp32": 200.0, "bf16": 800.0, "onnxruntime fp32": 400.0}, rows,
                      ["loaded machine"])
    doc["rows"] = rows
    return doc


def test_results_round_trip_and_bad_files(tmp_path):
    rows = [row("torch", "fp32", "image_svfr", 10.0), row("triton", "fp32", "sigrl", 4.0, source="perf_analyzer",
                                                          concurrency=4, gflop=None)]
    path = save_results(new_results("tiny", MACHINE, {"fp32": 1.0}, rows), tmp_path / "results.json")
    loaded = load_results(path)
    assert loaded["rows"] == rows and loaded["machine"] == MACHINE and loaded["config"] == "tiny"
    (tmp_path / "other.json").write_text(json.dumps({"benchmarks": []}))
    with pytest.raises(ValueError, match="not a sigrl bench results file"):
        load_results(tmp_path / "other.json")
    with pytest.raises(FileNotFoundError):
        load_results(tmp_path / "missing.json")


def test_rows_from_pytest_benchmark_use_every_round(tmp_path):
    info = {"runtime": "onnxruntime", "precision": "fp32", "engine": "image_svfr", "batch": 8, "classes": 81,
            "unit": "img/s", "items": 8, "gflop": 2.0, "provider": "CPUExecutionProvider", "case": ""}
    data = [0.010, 0.020, 0.030, 0.040, 0.100]
    document = {"benchmarks": [{"extra_info": info, "stats": {"median": 0.03, "data": data}},
                               {"extra_info": {}, "stats": {"median": 1.0}}]}  # not a sigrl case: ignored
    (tmp_path / "b.json").write_text(json.dumps(document))
    [parsed] = rows_from_pytest_benchmark(tmp_path / "b.json")
    assert parsed.p50_ms == pytest.approx(30.0) and parsed.p95_ms == pytest.approx(100.0)
    assert parsed.throughput == pytest.approx(8 / 0.03) and parsed.batch == 8 and parsed.gflop == 2.0


def test_report_ratios_against_eager_fp32_and_roofline():
    rows = [row("torch", "fp32", "image_svfr", 10.0), row("onnxruntime", "fp32", "image_svfr", 5.0),
            row("triton", "fp32", "sigrl", 20.0, case="cache-hit"),
            row("triton", "fp32", "sigrl", 25.0, source="perf_analyzer", concurrency=2)]
    report = render_report(results_with(rows))
    lines = {line.split("|")[1].strip() + "/" + line.split("|")[3].strip(): line for line in report.splitlines()
             if line.startswith("| ") and "image_svfr" not in line and line.count("|") > 10}
    # 1 GFLOP in 5 ms against ONNX Runtime's own 400 GFLOP/s probe; eager against torch's 200
    assert "| 2.00× | 200.0 | 50.0% |" in lines["onnxruntime/–"]
    assert "| 1.00× | 100.0 | 50.0% |" in lines["torch/–"]
    assert "| 0.50× | 50.0 | 12.5% |" in lines["triton/cache-hit"]  # served: ONNX Runtime, against its probe
    assert "perf_analyzer" in report and "> loaded machine" in report


def test_plots_are_written(tmp_path):
    rows = [row("torch", "fp32", "image_svfr", 10.0), row("torch", "fp32", "image_svfr", 50.0, batch=8),
            row("triton", "fp32", "sigrl", 25.0, source="perf_analyzer", concurrency=1),
            row("triton", "fp32", "sigrl", 30.0, source="perf_analyzer", concurrency=2)]
    written = write_plots(results_with(rows), tmp_path)
    assert sorted(p.name for p in written) == ["latency_vs_batch.png", "roofline_share.png",
                                               "throughput_vs_concurrency.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written)


def test_compare_prints_new_over_old_for_matching_cases():
    old = results_with([row("torch", "fp32", "image_svfr", 10.0), row("torch", "fp32", "text_gmc", 3.0)])
    new = results_with([row("torch", "fp32", "image_svfr", 5.0)])
    lines = compare(old, new)
    assert "0.50×" in lines[1] and "2.00×" in lines[1]
    assert lines[-1].startswith("1 cases in both files (0 only in the new, 1 only in the old)")


def test_perf_analyzer_inputs_and_csv(tmp_path):
    image = pa.bytes_tensor([b"\x89PNG-bytes"])
    raw = base64.b64decode(image["b64"])
    assert struct.unpack("<I", raw[:4])[0] == 10 and raw[4:] == b"\x89PNG-bytes"
    ids = np.arange(6, dtype=np.int32).reshape(2, 3)
    case = pa.text_case(ids)
    assert np.frombuffer(base64.b64decode(case.inputs["token_ids"]["b64"]), np.int32).tolist() == list(range(6))
    entry = pa.entry_case(b"png", ["cat", "dog"], batch=8)
    args = pa.command(tmp_path / "perf_analyzer", "127.0.0.1:1", entry, tmp_path / "d.json", tmp_path / "o.csv", 8,
                      quick=False)
    assert args[args.index("-b") + 1] == "8" and "labels:2" in args and "1:8:1" in args
    (tmp_path / "o.csv").write_text(
        "Concurrency,Inferences/Second,Client Send,p50 latency,p90 latency,p95 latency,p99 latency,Avg latency\n"
        "1,540.5,10,1500,1600,1700,1900,1550\n4,500,12,5800,6000,6100,6500,5900\n")
    image_rows = pa.parse_csv(tmp_path / "o.csv", pa.image_case(np.zeros((8, 3, 4, 4), np.float32),
                                                                np.zeros((2, 4), np.float32),
                                                                np.zeros((2, 4), np.float32)), "fp32")
    assert [(r.concurrency, r.p50_ms, r.p95_ms) for r in image_rows] == [(1, 1.5, 1.7), (4, 5.8, 6.1)]
    assert image_rows[0].throughput == pytest.approx(540.5 * 8)  # an unbatched request carries B images


def test_flop_count_and_roofline_probe():
    a = torch.randn(64, 32)
    assert count_gflop(lambda: a @ torch.randn(32, 16)) == pytest.approx(2 * 64 * 32 * 16 / 1e9)
    peaks = gemm_roofline(("fp32",), max_size=256, seconds=0.05)
    assert peaks["fp32"] > 0
    ort_peaks = onnxruntime_gemm_roofline(("fp32", "int8"), max_size=256, seconds=0.05, threads=1)
    assert sorted(ort_peaks) == ["onnxruntime fp32", "onnxruntime int8"] and min(ort_peaks.values()) > 0
    probes = {"fp32": 1.0, "bf16": 2.0, "int8": 3.0, "onnxruntime fp32": 4.0}
    assert roofline_for("torch", "fp16", probes) == 2.0  # torch has no fp16 probe: bf16's rate
    assert roofline_for("triton", "fp32", probes) == 4.0  # served engines run in ONNX Runtime
    assert roofline_for("onnxruntime", "int8", probes) is None  # torch's int8 kernels say nothing about ORT's


def test_cli_names_a_missing_suite_and_a_bad_compare_file(tmp_path, monkeypatch, capsys):
    (tmp_path / "old.json").write_text("[]")
    assert main(["bench", "--config", "tiny", "--out", str(tmp_path / "o"), "--compare",
                 str(tmp_path / "old.json")]) == 2
    assert "is not a sigrl bench results file" in capsys.readouterr().err
    monkeypatch.setattr(bench_cli, "SUITE", tmp_path / "benchmarks" / "test_engines.py")
    assert main(["bench", "--config", "tiny", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "test_engines.py is missing" in err and "pip install -e" in err


def test_cli_names_a_missing_plotting_library_before_any_work(tmp_path, monkeypatch, capsys):
    real_find_spec = bench_cli.importlib.util.find_spec
    monkeypatch.setattr(bench_cli.importlib.util, "find_spec",
                        lambda name, *args: None if name == "matplotlib" else real_find_spec(name, *args))
    assert main(["bench", "--config", "tiny", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "matplotlib is not installed" in err and ".[bench]" in err
    assert not (tmp_path / "o").exists()  # nothing measured, nothing written


def test_sigrl_bench_quick_on_tiny_engines_writes_results_report_plots(tiny_engines, tmp_path):
    """A real `sigrl bench --quick`, restricted to the fastest cases: torch, ONNX Runtime and the bundled
    Triton (engine models and the entry model), C = 81, B = 1.

    It reuses the session's exported tiny engines (the bench looks for ``tiny.pt`` and
    ``tiny-engines-fp32`` in --work), so it times the suite and report, not an export.
    """
    checkpoint, engines = tiny_engines
    work = tmp_path / "work"
    work.mkdir()
    (work / "tiny.pt").symlink_to(checkpoint)
    (work / "tiny-engines-fp32").symlink_to(engines)
    out = tmp_path / "out"
    assert main(["bench", "--config", "tiny", "--quick", "--out", str(out), "--work", str(work),
                 "--runtimes", "torch", "onnxruntime", "triton", "--precisions", "fp32", "bf16", "--no-perf-analyzer",
                 "--pytest-args=-k 'C81 and (text or B1)'"]) == 0
    results = load_results(out / "results.json")
    measured = {(r.runtime, r.precision, r.engine, r.batch, r.classes) for r in results["rows"]}
    for runtime in ("torch", "onnxruntime"):
        assert {(runtime, "fp32", "text_gmc", 1, 81), (runtime, "fp32", "image_svfr", 1, 81)} <= measured
        # bf16 is either measured or named as not measured, with the reason
        assert ((runtime, "bf16", "image_svfr", 1, 81) in measured
                or any(n.startswith("not measured") and "bf16" in n for n in results["notes"]))
    assert {("triton", "fp32", "image_svfr", 1, 81), ("triton", "fp32", "sigrl", 1, 81)} <= measured
    assert all(r.p95_ms >= r.p50_ms > 0 and r.throughput > 0 and r.gflop > 0 for r in results["rows"])
    assert results["roofline"]["fp32"] > 0 and results["machine"]["cores"] >= 1
    report = (out / "report.md").read_text()
    assert "## Image engine" in report and "1.00×" in report  # eager fp32 against itself
    assert (out / "latency_vs_batch.png").is_file() and (out / "roofline_share.png").is_file()
    compared = compare(results, load_results(out / "results.json"))
    assert compared[-1].startswith(f"{len(results['rows'])} cases in both files")
