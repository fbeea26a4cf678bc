"""Activation checkpointing for the chunked computations of GMC and SVFR."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint


def run_chunk(recompute: bool, fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
    """``fn(*args)``; with ``recompute`` (and autograd on), keep only the inputs and recompute in backward.

    Chunking alone bounds memory only without gradients: autograd would still store every chunk's
    intermediates. Dropout inside ``fn`` replays the same mask (the RNG state is preserved).
    """
    if recompute and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)
