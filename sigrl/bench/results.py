"""The one results schema every benchmark writes: rows of measured cases plus the machine they ran on.

``results.json`` holds ``{"schema", "config", "created", "machine", "roofline", "notes", "rows"}``;
each row is one case (:class:`Row`). pytest-benchmark JSON and perf_analyzer CSV are turned into rows
here, so the report, the plots and ``--compare`` read one format.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from sigrl.files import write_atomic
from sigrl.registry import PRECISIONS  # noqa: F401  (the suite and the command read it from here)

SCHEMA_VERSION = 1
SOURCES = ("pytest-benchmark", "perf_analyzer", "gpu_bench")
RUNTIMES = ("torch", "onnxruntime", "tensorrt", "triton")
# Libraries whose versions decide the numbers (recorded when installed).
LIBRARIES = ("sigrl", "torch", "onnxruntime", "onnx", "numpy", "tritonclient", "nvidia-pytriton", "tensorrt",
             "pytest-benchmark")


@dataclass
class Row:
    """One measured case.

    ``engine`` is ``text_gmc``, ``image_svfr`` or ``sigrl`` (the served entry model); ``case`` names a
    variant (``cache-hit``/``cache-miss`` for the entry model, ``cuda-graph``…). ``throughput`` is in
    ``unit`` (img/s for images, vocab/s for the text engine); ``gflop`` is the work of one call and
    ``peak_gb`` the peak memory (None when not measured).
    """

    runtime: str
    precision: str
    engine: str
    batch: int
    classes: int
    p50_ms: float
    p95_ms: float
    throughput: float
    unit: str
    source: str
    concurrency: int = 1
    case: str = ""
    gflop: float | None = None
    provider: str = ""
    peak_gb: float | None = None

    def key(self) -> tuple:
        """What identifies the case across runs (for ``--compare``)."""
        return (self.source, self.runtime, self.precision, self.engine, self.case, self.batch, self.classes,
                self.concurrency)

    def label(self) -> str:
        variant = f" {self.case}" if self.case else ""
        conc = f" c{self.concurrency}" if self.source == "perf_analyzer" else ""
        return (f"{self.runtime}/{self.precision} {self.engine}{variant} B={self.batch} C={self.classes}{conc}"
                f" [{self.source}]")


def _cpuinfo(key: str) -> str | None:
    """The first ``key`` line's value in /proc/cpuinfo (None where it is missing or cannot be read)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(key)), None)


def _cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


# The instruction sets CPU inference speed hinges on: int8 and bf16 are fast only with VNNI / AVX-512 BF16 / AMX.
CPU_ISA = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")


def cpu_isa() -> list[str]:
    """Which of :data:`CPU_ISA` this CPU has (from /proc/cpuinfo's flags; empty where it cannot be read)."""
    flags = (_cpuinfo("flags") or "").split()
    return [name for name in CPU_ISA if name in flags]


def _ram_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def _gpu() -> dict[str, Any] | None:
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "memory_gb": props.total_memory / 2**30, "cuda": torch.version.cuda,
            "count": torch.cuda.device_count()}


def machine_record() -> dict[str, Any]:
    """CPU model and instruction sets, cores, RAM, torch threads, library versions and the GPU (None without CUDA)."""
    import torch

    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {"cpu": _cpu_model(), "cpu_isa": cpu_isa(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "ram_gb": _ram_gb(), "platform": platform.platform(), "python": platform.python_version(),
            "libraries": versions, "gpu": _gpu()}


def new_results(config: str, machine: dict[str, Any], roofline: dict[str, float], rows: list[Row],
                notes: list[str] | None = None) -> dict[str, Any]:
    """A results document (see the module docstring)."""
    return {"schema": SCHEMA_VERSION, "config": config, "created": datetime.now(timezone.utc).isoformat(),
            "machine": machine, "roofline": roofline, "notes": list(notes or []), "rows": [asdict(r) for r in rows]}


def save_results(results: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    write_atomic(path, json.dumps(results, indent=2))
    return path


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a results file, checking the schema; ``rows`` come back as :class:`Row` objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} does not exist")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not JSON: {err}") from err
    if not isinstance(results, dict) or results.get("schema") != SCHEMA_VERSION or "rows" not in results:
        raise ValueError(f"{path} is not a sigrl bench results file (schema {SCHEMA_VERSION})")
    names = {f.name for f in fields(Row)}
    try:
        results["rows"] = [Row(**{k: v for k, v in row.items() if k in names}) for row in results["rows"]]
    except TypeError as err:
        raise ValueError(f"{path}: a row lacks a field: {err}") from err
    unknown = {row.source for row in results["rows"]} - set(SOURCES)
    if unknown:
        raise ValueError(f"{path}: unknown row source {sorted(unknown)}; expected one of {SOURCES}")
    return results


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rows_from_pytest_benchmark(path: str | Path) -> list[Row]:
    """Rows from a ``--benchmark-json`` file written with ``--benchmark-save-data`` (per-round times).

    Each benchmark's ``extra_info`` carries the row's parameters (the suite sets them); p50/p95 come
    from the recorded rounds, throughput from the items per call over the median.
    """
    document = json.loads(Path(path).read_text())
    rows = []
    for bench in document.get("benchmarks", []):
        info, stats = bench.get("extra_info", {}), bench["stats"]
        if "runtime" not in info:
            continue
        samples = stats.get("data") or [stats["median"]]
        p50 = statistics.median(samples)
        rows.append(Row(runtime=info["runtime"], precision=info["precision"], engine=info["engine"],
                        batch=int(info["batch"]), classes=int(info["classes"]), p50_ms=p50 * 1e3,
                        p95_ms=_percentile(samples, 0.95) * 1e3, throughput=info["items"] / p50,
                        unit=info["unit"], source="pytest-benchmark", case=info.get("case", ""),
                        gflop=info.get("gflop"), provider=info.get("provider", "")))
    return rows
