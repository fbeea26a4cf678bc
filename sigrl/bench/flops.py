"""Work and peak: FLOPs of one engine call (counted by ``torch.utils.flop_counter``) and GEMM roofline probes.

The probes time square matrix products in the benchmark's own process, so the report's "share of
roofline" compares each case with what this machine's GEMM reached in the same run, through the
library that ran the case: torch's kernels for eager PyTorch (keys ``fp32``, ``bf16``, ``int8``), ONNX
Runtime's for ONNX Runtime and the served engines (keys ``onnxruntime fp32`` ...; its CPU provider runs
fp16 and int8 through kernels of its own, not torch's, so one probe cannot stand for both).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

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
        peak = _probe(partial(_gemm, precision, device=device), max_size, seconds, device)
        if peak is not None:
            peaks[precision] = peak
    return peaks


ORT_PREFIX = "onnxruntime "


def _ort_gemm(precision: str, size: int, threads: int | None) -> Callable[[], object]:
    """One size×size×size MatMul graph in ONNX Runtime (CPU): an fp32 or fp16 MatMul against a constant, or
    the fp32 one quantized as the int8 engines are (:func:`sigrl.deploy.onnx_passes.quantize_int8`)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from sigrl.deploy.onnx_passes import quantize_int8

    dtype, elem = (np.float16, TensorProto.FLOAT16) if precision == "fp16" else (np.float32, TensorProto.FLOAT)
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((size, size)).astype(dtype), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("a", elem, [size, size])],
                              [helper.make_tensor_value_info("y", elem, [size, size])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if precision == "int8":
        model = quantize_int8(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {"a": rng.standard_normal((size, size)).astype(dtype)}
    return lambda: session.run(None, feeds)


def onnxruntime_gemm_roofline(precisions: tuple[str, ...] = ("fp32", "fp16", "int8"), max_size: int = 2048,
                              seconds: float = 1.0, threads: int | None = None) -> dict[str, float]:
    """:func:`gemm_roofline` through ONNX Runtime's CPU provider, keyed ``"onnxruntime <precision>"``."""
    peaks = {}
    for precision in precisions:
        peak = _probe(partial(_ort_gemm, precision, threads=threads), max_size, seconds, "cpu")
        if peak is not None:
            peaks[ORT_PREFIX + precision] = peak
    return peaks


def _probe(make: Callable[[int], Callable[[], object]], max_size: int, seconds: float, device: str) -> float | None:
    """Best GFLOP/s of the products ``make(size)`` builds, at the size found as :func:`gemm_roofline` says;
    None when the product cannot run here."""
    size = 256
    try:
        while True:
            call = make(size)
            call()  # warm-up: kernel selection, library handles
            once = _timed(call, device)
            if once > seconds / 10 or size >= max_size:
                break
            size *= 2
    except RuntimeError:
        return None
    best, deadline = once, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        best = min(best, _timed(call, device))
    return 2 * size**3 / best / 1e9


def _timed(call: Callable[[], object], device: str) -> float:
    start = time.perf_counter()
    call()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


ORT_RUNTIMES = ("onnxruntime", "triton")  # the served engines run in ONNX Runtime too (python runtime)


def roofline_for(runtime: str, precision: str, roofline: dict[str, float]) -> float | None:
    """The peak a case of ``runtime`` in ``precision`` is measured against: ONNX Runtime's probe for ONNX
    Runtime and the served engines, torch's for the others (fp16 then falls back to bf16's, the same
    tensor-core rate on GPUs). None when no probe applies."""
    if runtime in ORT_RUNTIMES:
        return roofline.get(ORT_PREFIX + precision)
    return roofline.get(precision) or (roofline.get("bf16") if precision == "fp16" else None)
