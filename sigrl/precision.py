"""Numeric precisions a model runs and deploys at, and casting a model to one of them.

Reduced precision means weights and matrix products in fp16 or bf16 while the numerically sensitive
steps stay fp32: LayerNorm statistics (open_clip's ``LayerNormFp32``), the softmaxes over patches and
over graph neighbours, L2 normalisations, the top-k mean and the eq. 13 score normalisation. Those
islands are written into ``gmc.py`` and ``svfr.py`` as casts that do nothing in fp32, so the fp32
model is unchanged and an exported low-precision graph carries its fp32 islands explicitly (which is
what strongly typed TensorRT builds from). The quantized precisions are properties of exported
engines only, each built on a float graph (:data:`QUANTIZED_BASE`): ``int8`` is ONNX Runtime dynamic
quantization of the fp32 image engine (CPU); ``int8-qdq`` and ``fp8`` are the fp16 image engine with
calibrated Q/DQ pairs (TensorRT). A PyTorch model is never quantized.
"""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
from open_clip.transformer import LayerNormFp32
from torch import nn

from sigrl.registry import PRECISIONS

M = TypeVar("M", bound=nn.Module)

FLOAT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
QUANTIZED_BASE = {"int8": "fp32", "int8-qdq": "fp16", "fp8": "fp16"}  # the float graph each quantized one starts from


def float_precision(precision: str) -> str:
    """The float precision an engine of ``precision`` computes its unquantized steps in."""
    return QUANTIZED_BASE.get(check_precision(precision), precision)


def check_precision(precision: str, allowed: tuple[str, ...] = PRECISIONS) -> str:
    """``precision`` if it is one of ``allowed``, else a ValueError that lists them."""
    if precision not in allowed:
        raise ValueError(f"unknown precision {precision!r}: choose one of {', '.join(allowed)}")
    return precision


def cast_model(model: M, precision: str) -> M:
    """A copy of ``model`` with weights in ``precision`` (fp32/fp16/bf16) and every LayerNorm kept in fp32.

    fp32 returns the model itself. The copy runs on inputs of its own dtype; SigRL casts its scores
    to fp32 (see ``SemanticReconstruction.score``).
    """
    dtype = FLOAT_DTYPES[check_precision(precision, tuple(FLOAT_DTYPES))]
    if dtype == torch.float32:
        return model
    cast = copy.deepcopy(model).to(dtype)
    for module in cast.modules():
        if isinstance(module, nn.LayerNorm):
            module.__class__ = LayerNormFp32  # same parameters; normalises in fp32 and casts back
            module.float()
    return cast


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the model computes in: that of its patch-embedding weights."""
    return next(p.dtype for p in model.parameters() if p.ndim > 1)
