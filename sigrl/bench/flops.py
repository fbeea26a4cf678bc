"""Work and peak: FLOPs of one engine call (counted by ``torch.utils.flop_counter``) and a GEMM roofline probe.

The probe times square matrix products with torch in the benchmark's own process, so the report's
"share of roofline" compares each case with what this machine's GEMM reached in the same run.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.int8}


def count_gflop(call: Callable[[], object]) -> float:
    """GFLOP of one ``call`` (matmuls, convolutions and attention, as torch's flop counter counts them)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        call()
    return counter.get_total_flops() / 1e9


def _gemm(precision: str, size: int, device: str) -> Callable[[], object]:
    """One size×size×size product in ``precision``: torch.mm, or torch._int_mm for int8 (int32 accumulate)."""
    dtype = PRECISION_DTYPES[precision]
    if precision == "int8":
        a = torch.randint(-128, 127, (size, size), dtype=dtype, device=device)
        b = torch.randint(-128, 127, (size, size), dtype=dtype, device=device)
        return lambda: torch._int_mm(a, b)
    a, b = torch.randn(size, size, device=device).to(dtype), torch.randn(size, size, device=device).to(dtype)
    return lambda: torch.mm(a, b)


def gemm_roofline(precisions: tuple[str, ...] = ("fp32", "bf16", "int8"), max_size: int = 2048,
                  seconds: float = 1.0, device: str = "cpu") -> dict[str, float]:
    """Best GFLOP/s (GOP/s for int8) of a square GEMM per precision, each probed for about ``seconds``.

    The matrix side doubles from 256 while one product takes under a tenth of the budget (up to
    ``max_size``), so a precision without fast kernels (bf16/int8 on a CPU without AVX-512 BF16/VNNI or
    AMX runs at well under 1 GFLOP/s) is probed at a size it can finish. The best of many runs, not the
    median: the roofline is what the hardware can reach. A precision this build cannot run is left out.
    """
    peaks = {}
    for precision in precisions:
        size = 256
        try:
            while True:
                call = _gemm(precision, size, device)
                call()  # warm-up: kernel selection, library handles
                once = _timed(call, device)
                if once > seconds / 10 or size >= max_size:
                    break
                size *= 2
        except RuntimeError:
            continue
        best, deadline = once, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            best = min(best, _timed(call, device))
        peaks[precision] = 2 * size**3 / best / 1e9
    return peaks


def _timed(call: Callable[[], object], device: str) -> float:
    start = time.perf_counter()
    call()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def roofline_for(precision: str, roofline: dict[str, float]) -> float | None:
    """The peak a case in ``precision`` is measured against (fp16 falls back to bf16's on CPU probes)."""
    return roofline.get(precision) or (roofline.get("bf16") if precision == "fp16" else None)
