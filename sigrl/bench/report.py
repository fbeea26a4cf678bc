"""``report.md``, the PNG plots and ``--compare`` from a results document (see :mod:`sigrl.bench.results`).

Every ratio is between rows of the same run: a runtime against eager PyTorch fp32 on the same engine,
batch and vocabulary (the served entry model against the eager image engine, i.e. what serving adds),
and achieved GFLOP/s against the GEMM roofline probed in that run.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sigrl.bench.flops import roofline_for
from sigrl.bench.results import Row

BASELINE = ("torch", "fp32")


def _baseline(rows: Iterable[Row]) -> dict[tuple[str, int, int], Row]:
    """Eager fp32 rows by (engine, batch, classes)."""
    return {(r.engine, r.batch, r.classes): r for r in rows
            if (r.runtime, r.precision, r.case) == (*BASELINE, "") and r.source != "perf_analyzer"}


def speedup(row: Row, baseline: dict[tuple[str, int, int], Row]) -> float | None:
    """Eager fp32 p50 over this row's p50 (>1: faster); the entry model is compared with the image engine."""
    engine = "image_svfr" if row.engine == "sigrl" else row.engine
    base = baseline.get((engine, row.batch, row.classes))
    return base.p50_ms / row.p50_ms if base and row.p50_ms > 0 else None


def achieved_gflops(row: Row) -> float | None:
    return row.gflop / (row.p50_ms / 1e3) if row.gflop and row.p50_ms > 0 else None


def roofline_share(row: Row, roofline: dict[str, float]) -> float | None:
    achieved, peak = achieved_gflops(row), roofline_for(row.runtime, row.precision, roofline)
    return achieved / peak if achieved is not None and peak else None


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(line) + " |" for line in lines)]


def _machine_lines(machine: dict[str, Any]) -> list[str]:
    gpu = machine.get("gpu")
    libraries = ", ".join(f"{k} {v}" for k, v in sorted(machine.get("libraries", {}).items()))
    ram = machine.get("ram_gb")
    isa = ", ".join(machine.get("cpu_isa") or ["not recorded"])
    return [f"- CPU: {machine.get('cpu')} ({machine.get('cores')} cores, torch threads {machine.get('torch_threads')}; "
            f"instruction sets: {isa})"
            f", RAM {_fmt(ram, '.0f', ' GiB')}",
            f"- GPU: {gpu['name'] + ', ' + format(gpu['memory_gb'], '.0f') + ' GiB' if gpu else 'none'}",
            f"- {machine.get('platform')}, Python {machine.get('python')}", f"- {libraries}"]


def render_report(results: dict[str, Any]) -> str:
    """The Markdown report of a results document whose rows are :class:`Row` objects."""
    rows: list[Row] = results["rows"]
    roofline = results.get("roofline", {})
    baseline = _baseline(rows)
    lines = [f"# sigrl bench: {results['config']}", "", f"Run {results.get('created', '')}.", "",
             *_machine_lines(results.get("machine", {})), ""]
    for note in results.get("notes", []):
        lines.append(f"> {note}")
    lines += ["", "## GEMM roofline (measured in this run)", "",
              *_table(["precision", "GFLOP/s"], [[p, f"{v:,.0f}"] for p, v in roofline.items()]), ""]
    timed = [r for r in rows if r.source != "perf_analyzer"]
    for engine, title in (("text_gmc", "Text engine (one vocabulary per call)"),
                          ("image_svfr", "Image engine"), ("sigrl", "Served entry model (gRPC, PNG images)"),
                          ("train_step", "Training step")):
        group = sorted((r for r in timed if r.engine == engine),
                       key=lambda r: (r.classes, r.batch, r.case, r.runtime, r.precision))
        if not group:
            continue
        lines += [f"## {title}", "", *_table(
            ["runtime", "precision", "case", "B", "C", "p50 ms", "p95 ms", "throughput", "vs eager fp32",
             "GFLOP/s", "of roofline"],
            [[r.runtime, r.precision, r.case or "–", str(r.batch), str(r.classes), f"{r.p50_ms:.2f}",
              f"{r.p95_ms:.2f}", f"{r.throughput:,.1f} {r.unit}", _fmt(speedup(r, baseline), ".2f", "×"),
              _fmt(achieved_gflops(r), ",.1f"), _fmt(roofline_share(r, roofline), ".1%")] for r in group]), ""]
    loaded = sorted((r for r in rows if r.source == "perf_analyzer"),
                    key=lambda r: (r.engine, r.classes, r.batch, r.concurrency))
    if loaded:
        lines += ["## perf_analyzer (served models, gRPC, concurrency sweep)", "", *_table(
            ["model", "B", "C", "concurrency", "p50 ms", "p95 ms", "throughput"],
            [[r.engine, str(r.batch), str(r.classes), str(r.concurrency), f"{r.p50_ms:.2f}", f"{r.p95_ms:.2f}",
              f"{r.throughput:,.1f} {r.unit}"] for r in loaded]), ""]
    lines += ["Plots: `latency_vs_batch.png`, `throughput_vs_concurrency.png`, `roofline_share.png`.", ""]
    return "\n".join(lines)


def write_plots(results: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Latency vs batch per runtime/precision, throughput vs concurrency, share of roofline (PNG, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir, rows, written = Path(out_dir), results["rows"], []
    timed = [r for r in rows if r.source != "perf_analyzer" and r.engine == "image_svfr"]
    class_sizes = sorted({r.classes for r in timed})
    if timed:
        fig, axes = plt.subplots(1, len(class_sizes), figsize=(5 * len(class_sizes), 4), squeeze=False)
        for ax, classes in zip(axes[0], class_sizes):
            for series in sorted({(r.runtime, r.precision, r.case) for r in timed if r.classes == classes}):
                points = sorted((r.batch, r.p50_ms) for r in timed
                                if (r.runtime, r.precision, r.case, r.classes) == (*series, classes))
                ax.plot(*zip(*points), marker="o", label=" ".join(filter(None, series)))
            ax.set(title=f"image engine, C={classes}", xlabel="batch B", ylabel="p50 latency (ms)", yscale="log")
            ax.legend(fontsize=8)
        written.append(_save(fig, out_dir / "latency_vs_batch.png"))
    loaded = [r for r in rows if r.source == "perf_analyzer"]
    if loaded:
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in sorted({(r.engine, r.batch, r.classes) for r in loaded}):
            points = sorted((r.concurrency, r.throughput) for r in loaded if (r.engine, r.batch, r.classes) == key)
            unit = next(r.unit for r in loaded if (r.engine, r.batch, r.classes) == key)
            ax.plot(*zip(*points), marker="o", label=f"{key[0]} B={key[1]} C={key[2]} ({unit})")
        ax.set(title="served throughput (perf_analyzer)", xlabel="concurrent requests", ylabel="throughput")
        ax.legend(fontsize=8)
        written.append(_save(fig, out_dir / "throughput_vs_concurrency.png"))
    shares = [(r, s) for r in rows if r.source != "perf_analyzer" and r.engine == "image_svfr"
              and (s := roofline_share(r, results.get("roofline", {}))) is not None]
    if shares:
        fig, ax = plt.subplots(figsize=(7, 0.3 * len(shares) + 1.5))
        ax.barh([f"{r.runtime} {r.precision} {r.case} B={r.batch} C={r.classes}".replace("  ", " ")
                 for r, _ in shares],
                [100 * s for _, s in shares])
        ax.set(title="image engine: achieved share of GEMM roofline", xlabel="% of roofline")
        written.append(_save(fig, out_dir / "roofline_share.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Lines of new/old ratios for the cases both result files hold (p50 latency and throughput)."""
    before = {r.key(): r for r in old["rows"]}
    lines = [f"{'case':<70} {'p50 old ms':>10} {'p50 new ms':>10} {'new/old p50':>11} {'new/old thr':>11}"]
    matched = 0
    for row in new["rows"]:
        previous = before.get(row.key())
        if previous is None:
            continue
        matched += 1
        lines.append(f"{row.label():<70} {previous.p50_ms:>10.2f} {row.p50_ms:>10.2f} "
                     f"{row.p50_ms / previous.p50_ms:>10.2f}× {row.throughput / previous.throughput:>10.2f}×")
    lines.append(f"{matched} cases in both files ({len(new['rows']) - matched} only in the new, "
                 f"{len(old['rows']) - matched} only in the old)")
    return lines
