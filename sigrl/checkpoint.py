"""Checkpoints: one dict of tensors and plain Python values, safe to read with ``weights_only=True``.

Writes are atomic (temporary file in the same folder, fsync, then ``os.replace``), so a crash while
writing never leaves a corrupt file under the final name: the previous good checkpoint stays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sigrl.factory import create_model
from sigrl.files import atomic_file
from sigrl.model import SigRL

FORMAT = "sigrl-checkpoint-v1"


def save_atomic(payload: dict[str, Any], path: str | Path) -> None:
    """torch.save to ``path`` without ever exposing a partly written file under that name."""
    with atomic_file(path) as handle:
        torch.save(payload, handle)


def model_payload(model: SigRL, vocabulary: list[str], **extra: Any) -> dict[str, Any]:
    """What every checkpoint holds: format tag, model name/config, vocabulary and weights (+ extra)."""
    if model.config_name is None:
        raise ValueError("the model has no registry name: build it with sigrl.create_model to checkpoint it")
    return {"format": FORMAT, "model_name": model.config_name, "model_config": model.config.to_dict(),
            "vocabulary": list(vocabulary), "model": model.state_dict(), **extra}


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, read safely; clear errors for a missing or foreign file."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a checkpoint file: pass e.g. {path / 'best.pt'}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        # torch's own message advises weights_only=False, which would run code from the file: never repeat it
        raise ValueError(f"cannot read checkpoint {path}: not a checkpoint written by sigrl, or damaged") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a sigrl checkpoint (expected format {FORMAT!r})")
    return payload


def load_checkpoint(path: str | Path) -> SigRL:
    """The trained model in eval mode, with its label vocabulary as ``model.vocabulary``."""
    payload = read_checkpoint(path)
    try:
        model = create_model(payload["model_name"], **payload["model_config"])
        model.load_state_dict(payload["model"])
    except (ValueError, TypeError, RuntimeError) as err:
        raise ValueError(f"checkpoint {path} does not fit its config {payload.get('model_name')!r}: {err}") from err
    model.vocabulary = list(payload["vocabulary"])
    return model.eval()
