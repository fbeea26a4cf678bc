"""Latency of a served request against the same work done in process, as printed by the demo and benchmarks.

A served ``sigrl`` request is: decode + evaluation transform, then the image engine against a cached
vocabulary. :class:`InProcessTagger` does exactly that with ONNX Runtime in this process, so the two
differ only by what serving adds (gRPC, Triton's scheduler, the python backend's hop to the entry model's stub).
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from sigrl.deploy.metadata import read_metadata
from sigrl.deploy.runtimes import OnnxRuntime
from sigrl.serving.images import ImagePreprocessor
from sigrl.tokenizer import tokenize


class InProcessTagger:
    """Image bytes + label names → scores with the exported engines in this process (vocabulary cached)."""

    def __init__(self, engine_dir: str | Path, device: str = "cpu") -> None:
        self.runtime = OnnxRuntime(engine_dir, device=device)
        meta = read_metadata(Path(engine_dir) / self.runtime.image_spec.file_name)
        self.template = meta.prompt_template
        self.preprocessor = ImagePreprocessor(meta.preprocess)
        self._cache: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = {}

    def pixels(self, images: list[bytes]) -> np.ndarray:
        """The evaluation transform of each encoded image, stacked B×3×H×W."""
        return self.preprocessor.pixels(images)

    def scores(self, images: list[bytes], labels: list[str]) -> np.ndarray:
        key = tuple(labels)
        if key not in self._cache:
            self._cache[key] = self.runtime.encode_labels(tokenize(labels, self.template).numpy())
        return self.runtime.score_images(self.pixels(images), *self._cache[key])


def png_bytes(image: np.ndarray) -> bytes:
    """An H×W×3 uint8 image encoded as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def latency(call: Callable[[], object], repeats: int, warmup: int = 3) -> dict[str, float]:
    """p50/p95/mean milliseconds of ``call`` run ``repeats`` times one after another."""
    return interleaved_latency({"call": call}, repeats, warmup)["call"]


def interleaved_latency(calls: Mapping[str, Callable[[], object]], repeats: int,
                        warmup: int = 3) -> dict[str, dict[str, float]]:
    """:func:`latency` of several calls measured in turns (a, b, a, b, ...), so that a busy machine slows
    them alike and their difference stays meaningful."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: _summary(values) for name, values in samples.items()}


def _summary(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {"p50_ms": statistics.median(samples), "p95_ms": samples[min(len(samples) - 1, int(0.95 * len(samples)))],
            "mean_ms": statistics.fmean(samples)}


def throughput(call: Callable[[], object], requests: int, concurrency: int) -> float:
    """Requests per second of ``call`` issued ``requests`` times from ``concurrency`` threads."""
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda _: call(), range(requests)))
    return requests / (time.perf_counter() - start)
