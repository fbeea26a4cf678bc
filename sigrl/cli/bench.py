"""``sigrl bench``: run the pytest-benchmark suite and perf_analyzer, write results.json, report.md and plots."""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
from pathlib import Path

import sigrl
from sigrl.bench.options import SuiteOptions, add_suite_options
from sigrl.cli.arguments import positive_int, writable_folder
from sigrl.errors import UsageError

# The suite is part of the source tree, not of the installed package: found beside the sigrl folder.
SUITE = Path(sigrl.__file__).resolve().parent.parent / "benchmarks" / "test_engines.py"
TOOLS_DIR = SUITE.parent.parent / "tools" / "perf_analyzer"


class SkipCollector:
    """pytest plugin: the reason of every skipped case, so the report says what was not measured."""

    def __init__(self) -> None:
        self.reasons: dict[str, int] = {}

    def pytest_runtest_logreport(self, report) -> None:
        if report.skipped and isinstance(report.longrepr, tuple):
            reason = report.longrepr[2].removeprefix("Skipped: ")
            self.reasons[reason] = self.reasons.get(reason, 0) + 1


def _check_setup() -> None:
    """Fail before any work when the suite, pytest-benchmark or matplotlib (the plots) is missing."""
    if not SUITE.is_file():
        raise FileNotFoundError(f"the benchmark suite {SUITE} is missing: `sigrl bench` runs from a source "
                                "checkout installed with `pip install -e .` (the benchmarks/ folder is not packaged)")
    for module, package in (("pytest_benchmark", "pytest-benchmark"), ("matplotlib", "matplotlib")):
        if importlib.util.find_spec(module) is None:
            raise FileNotFoundError(f'{package} is not installed (sigrl bench needs it): '
                                    'pip install -c constraints.txt -e ".[bench]"')


def _perf_analyzer_rows(args: argparse.Namespace, url: str, engines: Path, out: Path, notes: list[str]) -> list:
    """perf_analyzer over the served engines and entry model with real inputs; a note instead when it cannot run."""
    from sigrl.bench import perf_analyzer as pa
    from sigrl.bench import workload
    from sigrl.deploy.runtimes import OnnxRuntime, prepare_token_ids

    try:
        binary = pa.find_perf_analyzer(args.perf_analyzer)
    except FileNotFoundError as err:
        notes.append(f"perf_analyzer not run: {err}")
        print(f"sigrl bench: {err}", file=sys.stderr)
        return []
    runtime = OnnxRuntime(engines, device="cpu")
    size = runtime.image_spec.image_size
    class_sizes = (81,) if args.quick else (81, 1006)
    cases = []
    for classes in class_sizes:
        ids = prepare_token_ids(workload.token_ids(classes))
        cases.append(pa.text_case(ids))
        label_emb, graph_emb = runtime.encode_labels(ids)
        for batch in (1,) if args.quick or classes > 81 else (1, 8):
            cases.append(pa.image_case(workload.pixel_batch(batch, size), label_emb, graph_emb))
            cases.append(pa.entry_case(workload.png_images(1, size)[0], workload.vocabulary(classes), batch))
    rows = []
    for case in cases:
        print(f"perf_analyzer: {case.model} B={case.batch} C={case.classes}, concurrency 1..{args.max_concurrency}",
              flush=True)
        try:
            rows += pa.run_case(binary, url, case, out / "perf_analyzer", args.served_precision,
                                args.max_concurrency, args.quick)
        except RuntimeError as err:
            notes.append(f"perf_analyzer failed on {case.model} B={case.batch} C={case.classes}: "
                         f"{str(err).splitlines()[-1]}")
            print(err, file=sys.stderr)
    return rows


def _suite_args(args: argparse.Namespace, pytest_json: Path) -> list[str]:
    """pytest arguments that run the suite with JSON of every round in ``pytest_json`` (the suite's own options
    come from :class:`~sigrl.bench.options.SuiteOptions`)."""
    suite_args = [str(SUITE), "-q", "-rs", "-p", "no:cacheprovider", f"--benchmark-json={pytest_json}",
                  "--benchmark-save-data"]
    if args.pytest_args:
        suite_args += shlex.split(args.pytest_args)
    return suite_args


def cmd_bench(args: argparse.Namespace) -> int:
    _check_setup()
    import pytest

    from sigrl.bench import workload
    from sigrl.bench.flops import gemm_roofline, onnxruntime_gemm_roofline
    from sigrl.bench.report import compare, render_report, write_plots
    from sigrl.bench.results import load_results, machine_record, new_results, rows_from_pytest_benchmark, save_results

    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    old = load_results(args.compare) if args.compare else None
    out = writable_folder("--out", args.out)
    work = writable_folder("--work", args.work) if args.work else writable_folder("--out", out / "work")
    for flag, folder in (("--out", out), ("--work" if args.work else "--out", work)):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(f"{flag} {folder}: {err.strerror or err}") from None
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # before the roofline probe and the suite, which runs in this process
    machine = machine_record()
    print(f"machine: {machine['cpu']} ({', '.join(machine['cpu_isa']) or 'no AVX2'}), {machine['cores']} cores; "
          "probing the GEMM roofline ...", flush=True)
    roofline = gemm_roofline(seconds=0.5 if args.quick else 2.0)
    if {"onnxruntime", "triton"} & set(args.runtimes):
        roofline |= onnxruntime_gemm_roofline(tuple(p for p in args.precisions if p != "bf16"),
                                              seconds=0.5 if args.quick else 2.0, threads=args.threads)
    checkpoint = workload.bench_checkpoint(args.config, work)
    notes = [f"torch, in-process ONNX Runtime and the served engines used {args.threads} thread(s)"] \
        if args.threads else []
    pytest_json = out / "pytest-benchmark.json"
    suite_args = _suite_args(args, pytest_json)
    suite_options = {**vars(args), "work": str(work)}
    serve = "triton" in args.runtimes and args.served_precision in args.precisions
    server = None
    collector = SkipCollector()
    perf_rows = []
    try:
        if serve:
            print("starting the bundled Triton server ...", flush=True)
            server = workload.start_server(checkpoint, args.served_precision, args.threads)
            suite_options["triton_url"] = server.grpc_url
        code = pytest.main(suite_args, plugins=[collector, SuiteOptions(suite_options)])
        if code not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            print(f"sigrl bench: error: the benchmark suite failed (pytest exit {int(code)}); see its output above",
                  file=sys.stderr)
            return 1
        if server is not None and not args.no_perf_analyzer:
            engines = workload.engines_dir(checkpoint, args.served_precision)
            perf_rows = _perf_analyzer_rows(args, server.grpc_url, engines, out, notes)
    finally:
        if server is not None:
            server.stop()
    notes += [f"not measured ({count} cases): {reason}" for reason, count in sorted(collector.reasons.items())]
    rows = rows_from_pytest_benchmark(pytest_json) + perf_rows
    results = new_results(args.config, machine, roofline, rows, notes)
    save_results(results, out / "results.json")
    results["rows"] = rows
    (out / "report.md").write_text(render_report(results))
    plots = write_plots(results, out)
    print(f"{len(rows)} measured cases -> {out / 'results.json'}, {out / 'report.md'}, "
          f"{', '.join(p.name for p in plots)}")
    if old is not None:
        print("\n".join(compare(old, results)))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``bench`` to the ``sigrl`` parser."""
    bench = commands.add_parser("bench", help="measure every runtime and precision side by side (JSON, report, plots)")
    add_suite_options(bench.add_argument, skip=("triton_url",))  # the suite's options, shared with its conftest
    bench.add_argument("--out", required=True, help="folder for results.json, report.md, plots and raw outputs")
    bench.add_argument("--compare", metavar="OLD.json", help="print new/old ratios against an earlier results.json")
    bench.add_argument("--perf-analyzer", default=str(TOOLS_DIR),
                       help="perf_analyzer tools folder (make perf-analyzer)")
    bench.add_argument("--max-concurrency", type=positive_int, default=8, help="perf_analyzer concurrency 1..N")
    bench.add_argument("--no-perf-analyzer", action="store_true", help="only the pytest-benchmark suite")
    bench.add_argument("--pytest-args", help="extra pytest arguments for the suite, e.g. \"-k 'image and B1'\"")
    bench.set_defaults(func=cmd_bench)
