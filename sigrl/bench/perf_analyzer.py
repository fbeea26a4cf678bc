"""NVIDIA perf_analyzer against a served repository: input data files, the command, and its CSV as rows.

perf_analyzer 2.51 (matching the bundled Triton) is the ``bin/perf_analyzer`` of the ``tritonclient``
2.51.0 manylinux wheel, installed into a tools folder by ``make perf-analyzer`` together with a
``lib/`` of the two shared libraries it looks for under their plain names. Real inputs go in through
``--input-data`` JSON: token ids for ``text_gmc``, pixels and an encoded vocabulary for ``image_svfr``,
encoded PNG images and label names (BYTES) for the ``sigrl`` entry model.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sigrl.bench.results import Row
from sigrl.deploy.engines import ImageSVFREngine, TextGMCEngine

DEFAULT_TOOLS_DIR = Path("tools") / "perf_analyzer"
# Stable enough on a loaded 2-core machine: fixed request counts per window instead of time windows.
MEASUREMENT_FLAGS = ("--measurement-mode", "count_windows", "--measurement-request-count", "50",
                     "-s", "50", "--max-trials", "6")
QUICK_MEASUREMENT_FLAGS = ("--measurement-mode", "count_windows", "--measurement-request-count", "20",
                           "-s", "50", "--max-trials", "6")


@dataclass
class PerfCase:
    """One served model under load: the JSON inputs, explicit shapes of dynamic inputs, and the row labels.

    ``batch_flag`` is perf_analyzer's ``-b`` for a batched model (the entry model); unbatched engine
    models carry their batch in the input shapes. ``items`` counts images (or vocabularies) per inference.
    """

    model: str
    batch: int
    classes: int
    unit: str
    items: int
    inputs: dict[str, dict]
    shapes: dict[str, list[int]] = field(default_factory=dict)
    batch_flag: int | None = None
    case: str = ""


def find_perf_analyzer(tools_dir: str | Path = DEFAULT_TOOLS_DIR) -> Path:
    """The perf_analyzer binary in ``tools_dir``; FileNotFoundError naming the install target otherwise."""
    binary = Path(tools_dir) / "bin" / "perf_analyzer"
    if not binary.is_file():
        raise FileNotFoundError(f"perf_analyzer is not installed at {binary}: run `make perf-analyzer`")
    return binary


def numeric_tensor(array: np.ndarray) -> dict:
    """A numeric input as perf_analyzer JSON: raw little-endian bytes in base64, with its shape."""
    return {"b64": base64.b64encode(np.ascontiguousarray(array).tobytes()).decode(), "shape": list(array.shape)}


def bytes_tensor(items: list[bytes]) -> dict:
    """A BYTES input of encoded items (e.g. PNG files) as Triton serialises it: 4-byte length + bytes each."""
    raw = b"".join(struct.pack("<I", len(item)) + item for item in items)
    return {"b64": base64.b64encode(raw).decode(), "shape": [len(items)]}


def text_case(token_ids: np.ndarray) -> PerfCase:
    ids = np.ascontiguousarray(token_ids, dtype=np.int32)
    return PerfCase(TextGMCEngine.name, 1, ids.shape[0], "vocab/s", 1,
                    {TextGMCEngine.TOKEN_IDS: numeric_tensor(ids)}, {TextGMCEngine.TOKEN_IDS: list(ids.shape)})


def image_case(pixels: np.ndarray, label_emb: np.ndarray, graph_emb: np.ndarray) -> PerfCase:
    tensors = ImageSVFREngine.feeds(*(a.astype(np.float32) for a in (pixels, label_emb, graph_emb)))
    return PerfCase(ImageSVFREngine.name, pixels.shape[0], label_emb.shape[0], "img/s", pixels.shape[0],
                    {name: numeric_tensor(a) for name, a in tensors.items()},
                    {name: list(a.shape) for name, a in tensors.items()})


def entry_case(image: bytes, labels: list[str], batch: int) -> PerfCase:
    """The ``sigrl`` model: one PNG and C label names per batch item, ``batch`` items per request (``-b``).

    The labels are the same in every request, so after the first one every request is a vocabulary-cache hit.
    """
    inputs = {"image": bytes_tensor([image]), "labels": {"content": list(labels), "shape": [len(labels)]}}
    return PerfCase("sigrl", batch, len(labels), "img/s", 1, inputs, {"labels": [len(labels)]}, batch_flag=batch,
                    case="cache-hit")


def command(binary: Path, url: str, case: PerfCase, data_file: Path, csv_file: Path, max_concurrency: int,
            quick: bool) -> list[str]:
    """The perf_analyzer command line for ``case`` (gRPC, concurrency 1..max, CSV to ``csv_file``)."""
    step = max(1, max_concurrency - 1) if quick else 1
    args = [str(binary), "-m", case.model, "-u", url, "-i", "grpc", "--input-data", str(data_file),
            "--concurrency-range", f"1:{max_concurrency}:{step}", "-f", str(csv_file),
            *(QUICK_MEASUREMENT_FLAGS if quick else MEASUREMENT_FLAGS)]
    for name, shape in case.shapes.items():
        args += ["--shape", f"{name}:{','.join(map(str, shape))}"]
    if case.batch_flag is not None:
        args += ["-b", str(case.batch_flag)]
    return args


def parse_csv(path: Path, case: PerfCase, precision: str) -> list[Row]:
    """One row per concurrency level from perf_analyzer's CSV (latencies there are in microseconds)."""
    rows = []
    with open(path, newline="") as handle:
        for record in csv.DictReader(handle):
            rows.append(Row(runtime="triton", precision=precision, engine=case.model, batch=case.batch,
                            classes=case.classes, p50_ms=float(record["p50 latency"]) / 1e3,
                            p95_ms=float(record["p95 latency"]) / 1e3,
                            throughput=float(record["Inferences/Second"]) * case.items, unit=case.unit,
                            source="perf_analyzer", concurrency=int(record["Concurrency"]), case=case.case))
    return rows


def run_case(binary: Path, url: str, case: PerfCase, out_dir: Path, precision: str = "fp32",
             max_concurrency: int = 8, quick: bool = False, timeout_s: float = 900) -> list[Row]:
    """Run perf_analyzer for one case; the input JSON, CSV and log stay in ``out_dir``. RuntimeError on failure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{case.model}-B{case.batch}-C{case.classes}"
    data_file, csv_file, log_file = (out_dir / f"{stem}{suffix}" for suffix in (".json", ".csv", ".log"))
    data_file.write_text(json.dumps({"data": [case.inputs]}))
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(binary.parent.parent / "lib"),
                                                           env.get("LD_LIBRARY_PATH")]))
    args = command(binary, url, case, data_file, csv_file, max_concurrency, quick)
    run = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout_s)
    log_file.write_text(" ".join(args) + "\n\n" + run.stdout + run.stderr)
    if run.returncode != 0 or not csv_file.is_file():
        tail = "\n".join((run.stdout + run.stderr).strip().splitlines()[-5:])
        raise RuntimeError(f"perf_analyzer failed on {case.model} (exit {run.returncode}, log {log_file}):\n{tail}")
    return parse_csv(csv_file, case, precision)
