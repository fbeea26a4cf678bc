"""Argument types and checks shared by the command groups: bad values fail at parse time, naming the flag.

argparse reports a type's ``ArgumentTypeError`` as ``argument --flag: <message>``; the checks that
need more than one value (a device, an output path) raise :class:`~sigrl.errors.UsageError` naming
the flag. Nothing here imports torch until a check needs it.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from sigrl.errors import UsageError
from sigrl.files import write_atomic


def positive_int(text: str) -> int:
    """An integer ≥ 1 (batch sizes, epochs, steps, top-k, chunk sizes)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An integer ≥ 0 (worker counts, CoOp context length)."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (learning rates)."""
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number ≥ 0 (loss weights, scales)."""
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def torch_device(flag: str, value: str | None) -> str | None:
    """``value`` of a ``--device`` flag for torch, checked: ``cuda`` needs a CUDA device torch can see."""
    if value is None:
        return None
    import torch

    try:
        device = torch.device(value)
    except RuntimeError:
        raise UsageError(f"{flag} {value!r} is not a device: use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{flag} {value}: this torch sees no CUDA device "
                             f"(torch {torch.__version__}); use {flag} cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"{flag} {value}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type != "cpu":
        raise UsageError(f"{flag} {value!r}: sigrl runs on cpu or cuda")
    return value


def writable_folder(flag: str, path: str | Path) -> Path:
    """``path`` given by ``flag``, checked to be a folder sigrl can write into or create (nothing is created)."""
    path = Path(path)
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise UsageError(f"{flag} {path}: {existing} is a file, not a folder; pass a folder sigrl can write into")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: {existing} is not writable; pass a folder sigrl can write into")
    return path


def writable_file(flag: str, path: str | Path) -> Path:
    """``path`` given by ``flag`` as a file sigrl can write (its folder created if missing)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder: pass a file name, e.g. {path / 'result.json'}")
    writable_folder(flag, path.parent)  # the folder is created when the file is written
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {path}: the file is not writable")
    return path


def write_json(path: Path, value: Any) -> None:
    """Write a JSON result (checked by :func:`writable_file`), creating its folder; atomically, so a crash
    leaves the previous file whole."""
    write_atomic(path, json.dumps(value, indent=2, default=str))
