"""The options of the benchmark suite, defined once: ``sigrl bench`` offers them as ``--NAME`` and the suite's
pytest plugin (``benchmarks/conftest.py``) as ``--bench-NAME``, from this one table; ``sigrl bench`` hands its
parsed values to the suite as they are (:class:`SuiteOptions`), not through strings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sigrl.bench.results import PRECISIONS, RUNTIMES
from sigrl.registry import list_models

PREFIX = "bench_"  # the suite's option names: --bench-runtimes is ``config.option.bench_runtimes``

SUITE_OPTIONS: dict[str, dict[str, Any]] = {
    "config": {"default": "tiny", "choices": list_models(), "help": "model configuration (random weights)"},
    "runtimes": {"nargs": "+", "choices": RUNTIMES, "default": list(RUNTIMES), "help": "runtimes to measure"},
    "precisions": {"nargs": "+", "choices": PRECISIONS, "default": list(PRECISIONS), "help": "precisions to measure"},
    "served_precision": {"choices": PRECISIONS, "default": "fp32", "help": "precision Triton serves"},
    "quick": {"action": "store_true", "help": "short rounds (about 1 s of timed rounds per case instead of 5 s)"},
    "work": {"help": "folder for the checkpoint and engines (reused between runs)"},
    "trt_plans": {"help": "folder with <precision>/text_gmc.plan, image_svfr.plan (GPU)"},
    "threads": {"type": int, "help": "CPU threads of torch, in-process ONNX Runtime and the served engine sessions "
                                     "(default: theirs). 1 avoids OpenMP stalls on a shared machine"},
    "triton_url": {"help": "gRPC address of a server already serving the engines (default: start the bundled one)"},
}


def add_suite_options(add: Callable[..., Any], prefix: str = "", skip: tuple[str, ...] = ()) -> None:
    """Declare every suite option with ``add`` (``argparse``'s ``add_argument`` or pytest's ``addoption``) as
    ``--{prefix}{name}`` (underscores become dashes), its destination ``{prefix}{name}``."""
    for name, spec in SUITE_OPTIONS.items():
        if name not in skip:
            flag = f"--{prefix}{name}".replace("_", "-")
            add(flag, dest=f"{prefix}{name}".replace("-", "_"), **spec)


class SuiteOptions:
    """pytest plugin that sets the suite's options to values ``sigrl bench`` parsed (no string round trip)."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = {name: values[name] for name in SUITE_OPTIONS if name in values}

    def pytest_configure(self, config: Any) -> None:
        for name, value in self.values.items():
            setattr(config.option, PREFIX + name, value)
