"""Options, parameters and shared fixtures of the pytest-benchmark suite (``test_engines.py``).

Cases are runtime × precision × engine × B × C, parametrised here from the ``--bench-*`` options
(declared in :mod:`sigrl.bench.options`, which ``sigrl bench`` shares) the way TorchBench's
``test_bench.py`` parametrises model × device. Heavy objects (checkpoint, engines,
runtimes, the Triton server) are built once per session and reused; a runtime or precision this
install cannot run is skipped with the reason :class:`sigrl.bench.workload.Unavailable` gives.
Run it through ``sigrl bench``, or directly:
``pytest benchmarks --bench-config tiny --bench-quick --benchmark-json out.json --benchmark-save-data``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sigrl.bench import workload
from sigrl.bench.options import PREFIX, add_suite_options
from sigrl.bench.workload import Unavailable

BATCHES = (1, 8)
CLASSES = (81, 1006)
ROUNDS = (3, 50)  # fewest and most timed rounds per case


def pytest_addoption(parser: pytest.Parser) -> None:
    add_suite_options(parser.getgroup("sigrl bench").addoption, PREFIX)  # sigrl bench sets them itself


def pytest_configure(config: pytest.Config) -> None:
    if config.option.bench_threads:
        import torch

        torch.set_num_threads(config.option.bench_threads)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    options = metafunc.config.option
    axes = {"runtime": list(options.bench_runtimes), "precision": list(options.bench_precisions),
            "batch": list(BATCHES), "classes": list(CLASSES)}
    for name, values in axes.items():
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, values, ids=[f"{name[0].upper()}{v}" if isinstance(v, int) else v
                                                    for v in values])


@pytest.fixture(scope="session")
def options(request: pytest.FixtureRequest):
    return request.config.option


@pytest.fixture(scope="session")
def asked(options) -> dict[str, list[str]]:
    """The runtimes and precisions the run asks for."""
    return {"runtimes": list(options.bench_runtimes), "precisions": list(options.bench_precisions)}


@pytest.fixture(scope="session")
def checkpoint(options, tmp_path_factory) -> Path:
    work = Path(options.bench_work) if options.bench_work else tmp_path_factory.mktemp("bench")
    work.mkdir(parents=True, exist_ok=True)
    return workload.bench_checkpoint(options.bench_config, work)


class LazyServer:
    """The given ``--bench-triton-url``, else a bundled Triton started on first use on the served engines."""

    def __init__(self, options, checkpoint: Path) -> None:
        self.options, self.checkpoint, self.server = options, checkpoint, None

    def url(self) -> str:
        if self.options.bench_triton_url:
            return self.options.bench_triton_url
        if self.server is None:
            self.server = workload.start_server(self.checkpoint, self.options.bench_served_precision,
                                                self.options.bench_threads)
        return self.server.grpc_url

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


@pytest.fixture(scope="session")
def served(options, checkpoint):
    holder = LazyServer(options, checkpoint)
    yield holder
    holder.stop()


@pytest.fixture(scope="session")
def runtimes(options, checkpoint, served):
    """``get(runtime, precision)``: a cached runtime, or a skip naming why it cannot run here."""
    cache: dict[tuple[str, str], object] = {}

    def get(runtime: str, precision: str):
        key = (runtime, precision)
        if key not in cache:
            try:
                cache[key] = _make_runtime(runtime, precision, options, checkpoint, served)
            except Unavailable as reason:
                cache[key] = reason
        if isinstance(cache[key], Unavailable):
            pytest.skip(str(cache[key]))
        return cache[key]

    return get


def _make_runtime(runtime: str, precision: str, options, checkpoint: Path, served: LazyServer):
    if runtime == "torch":
        return workload.torch_runtime(checkpoint, precision)
    if runtime == "onnxruntime":
        return workload.onnx_runtime(checkpoint, precision, threads=options.bench_threads)
    if runtime == "tensorrt":
        return workload.tensorrt_runtime(Path(options.bench_trt_plans) if options.bench_trt_plans else None,
                                         precision)
    if runtime == "triton":
        if precision != options.bench_served_precision:
            raise Unavailable(f"the served engines are {options.bench_served_precision} (--bench-served-precision)")
        from sigrl.serving.triton_runtime import TritonRuntime

        return TritonRuntime(served.url())
    raise Unavailable(f"unknown runtime {runtime!r}")


@pytest.fixture(scope="session")
def eager_fp32(checkpoint):
    """The fp32 eager model, for counting FLOPs."""
    return workload.torch_runtime(checkpoint, "fp32").model


@pytest.fixture
def measure(benchmark, options):
    """``measure(call, info, setup=None)``: time ``call`` with pytest-benchmark, rounds sized to the call.

    One untimed call first (warm-up, and an estimate of its duration); then as many rounds as fit in
    about 5 s (1 s with ``--bench-quick``), at least 3 and at most 50. ``info`` lands in ``extra_info``.
    """
    budget = 1.0 if options.bench_quick else 5.0

    def run(call, info: dict, setup=None):
        args = setup() if setup else ((), {})
        start = time.perf_counter()
        call(*args[0], **args[1])
        once = time.perf_counter() - start
        rounds = max(ROUNDS[0], min(ROUNDS[1], int(budget / max(once, 1e-4))))
        benchmark.extra_info.update(info)
        benchmark.pedantic(call, setup=setup, rounds=rounds, warmup_rounds=0 if options.bench_quick else 1)

    return run
