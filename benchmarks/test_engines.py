"""Latency of both engines in every runtime and precision, and of the served ``sigrl`` entry model.

Each test times one call with pytest-benchmark (``benchmark.pedantic``) and records the case in
``benchmark.extra_info``: runtime, precision, engine, batch, classes, items per call and their unit,
GFLOP per call (counted on the fp32 eager model) and where it ran. ``sigrl bench`` turns the JSON into
``results.json``; nothing here asserts a timing.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from sigrl.bench import workload
from sigrl.bench.flops import count_gflop
from sigrl.deploy.runtimes import prepare_token_ids


@pytest.fixture(scope="session")
def image_size(eager_fp32) -> int:
    return eager_fp32.config.vision_cfg["image_size"]


@pytest.fixture(scope="session")
def gflop(eager_fp32, image_size):
    """``gflop(engine, batch, classes)``: work of one call, counted once per (engine, C) at B=1 and scaled by B."""
    cache: dict[tuple[str, int], float] = {}

    def count(engine: str, classes: int) -> float:
        if (engine, classes) not in cache:
            ids = torch.from_numpy(prepare_token_ids(workload.token_ids(classes))).long()
            with torch.no_grad():
                label_emb, graph_emb = eager_fp32.encode_labels(ids)
            pixels = torch.from_numpy(workload.pixel_batch(1, image_size))
            cache["text_gmc", classes] = count_gflop(lambda: eager_fp32.encode_labels(ids))
            cache["image_svfr", classes] = count_gflop(lambda: eager_fp32.score_images(pixels, label_emb, graph_emb))
        return cache[engine, classes]

    def get(engine: str, batch: int, classes: int) -> float:
        return count(engine, classes) if engine == "text_gmc" else batch * count("image_svfr", classes)

    return get


def case_info(runtime: str, precision: str, engine: str, batch: int, classes: int, unit: str, items: int,
              gflop: float, provider: str, case: str = "") -> dict:
    return {"runtime": runtime, "precision": precision, "engine": engine, "batch": batch, "classes": classes,
            "unit": unit, "items": items, "gflop": gflop, "provider": provider, "case": case}


def test_text_engine(measure, runtimes, gflop, runtime, precision, classes):
    """Encode a vocabulary of C labels (text encoder + GMC): what a vocabulary-cache miss costs."""
    rt = runtimes(runtime, precision)
    ids = workload.token_ids(classes)
    measure(lambda: rt.encode_labels(ids),
            case_info(runtime, precision, "text_gmc", 1, classes, "vocab/s", 1, gflop("text_gmc", 1, classes),
                      rt.provider))


def test_image_engine(measure, runtimes, gflop, image_size, runtime, precision, batch, classes):
    """Score B images against an encoded vocabulary of C labels (image encoder + SVFR)."""
    rt = runtimes(runtime, precision)
    label_emb, graph_emb = rt.encode_labels(workload.token_ids(classes))
    pixels = workload.pixel_batch(batch, image_size)
    measure(lambda: rt.score_images(pixels, label_emb, graph_emb),
            case_info(runtime, precision, "image_svfr", batch, classes, "img/s", batch,
                      gflop("image_svfr", batch, classes), rt.provider))


@pytest.mark.parametrize("cache", ["cache-hit", "cache-miss"])
def test_served_entry(measure, served, options, asked, gflop, image_size, batch, classes, cache):
    """One gRPC request to ``sigrl``: B PNG images and C label names, the vocabulary cached or new each round.

    A hit is decode + transform + image engine; a miss adds server-side tokenisation and the text engine.
    """
    precision = options.bench_served_precision
    if "triton" not in asked["runtimes"] or precision not in asked["precisions"]:
        pytest.skip(f"triton/{precision} is not among the runtimes and precisions asked for")
    from sigrl.serving.client import SigRLClient

    client = SigRLClient(served.url())
    images = workload.png_images(batch, image_size)
    work = gflop("image_svfr", batch, classes)
    if cache == "cache-hit":
        labels = workload.vocabulary(classes)
        client.infer(images, labels)  # fills the server's vocabulary cache
        setup = None
        call = lambda: client.infer(images, labels)  # noqa: E731
    else:
        fresh = itertools.count()
        setup = lambda: ((images, workload.vocabulary(classes, salt=f" v{next(fresh)}")), {})  # noqa: E731
        call = client.infer
        work += gflop("text_gmc", 1, classes)
    measure(call, case_info("triton", precision, "sigrl", batch, classes, "img/s", batch, work,
                            f"triton grpc {served.url()}", cache), setup=setup)
    client.close()
