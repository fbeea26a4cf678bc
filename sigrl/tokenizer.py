"""Prompting and tokenisation of label names with open_clip's CLIP BPE tokenizer (bundled, no download).

Torch-free code (the served models, the gRPC client) uses :mod:`sigrl.bpe`, held to the same ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import open_clip
import torch

from sigrl.bpe import CONTEXT_LENGTH, prompts
from sigrl.config import DEFAULT_TEMPLATE


@lru_cache(maxsize=1)
def _clip_tokenizer() -> open_clip.tokenizer.SimpleTokenizer:
    return open_clip.tokenizer.SimpleTokenizer(context_length=CONTEXT_LENGTH)


def coop_template(n_ctx: int) -> str:
    """CoOp prompt: n_ctx placeholder words (replaced by learned vectors) before the label name."""
    return " ".join(["X"] * n_ctx) + " {}."


def tokenize(label_names: Sequence[str], template: str = DEFAULT_TEMPLATE) -> torch.Tensor:
    """Put each label name into ``template`` and return CLIP token ids, shape len(label_names)×77."""
    if isinstance(label_names, str) or len(label_names) == 0:
        raise ValueError("label_names must be a non-empty list of strings")
    for position, name in enumerate(label_names):
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"label name at position {position} must be a non-empty string, got {name!r}")
    return _clip_tokenizer()(prompts(label_names, template))


def trim_token_ids(token_ids: torch.Tensor) -> torch.Tensor:
    """Cut CLIP token ids (C×77) to the longest prompt: columns after every EOT token are padding.

    The EOT token has the largest id in CLIP's vocabulary, so its position is the row's argmax.
    """
    if token_ids.ndim != 2 or token_ids.shape[0] == 0:
        raise ValueError(f"token_ids must be C×L with C >= 1, got shape {tuple(token_ids.shape)}")
    return token_ids[:, :int(token_ids.argmax(dim=-1).max()) + 1]
