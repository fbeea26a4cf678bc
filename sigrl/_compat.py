"""Make ``import torchvision`` work on the CPU build of torch.

The registry's torchvision 0.28.0 wheel is linked against CUDA. On the CPU build of torch 2.13 its
C++ extension (``torchvision/_C.so``) cannot load, so the ``torchvision::*`` operators are never
defined, and ``torchvision/_meta_registrations.py`` then fails at import time with
``RuntimeError: operator torchvision::nms does not exist``. timm and open_clip both import
torchvision, so nothing in this project would import.

Only ``nms`` and ``qnms`` are registered unconditionally by torchvision; every other registration is
guarded by ``torchvision.extension._has_ops()``. Defining the schemas of those two operators is
therefore enough for torchvision's transforms and model code to import. The C++ kernels stay
unavailable (calling ``torchvision.ops.nms`` raises), so images are loaded with PIL, never with
``torchvision.io``.

:func:`ensure_torchvision_importable` must run before the first torchvision import. ``import sigrl``
does not import torch (the gRPC client and ``sigrl tag`` start fast), so instead of running it then,
``sigrl``'s ``__init__`` calls :func:`run_before_torchvision_import`: an import hook that runs it when
torchvision is first imported, by sigrl's modules or by the user's. Where the extension loads (a CUDA
build of torch), it does nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path
from typing import Any

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library: Any = None  # the torch.library.Library, kept alive: dropping it would unregister the schemas


def _extension_loads() -> bool:
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return True  # torchvision absent: nothing to patch
    candidates = list(Path(spec.origin).parent.glob("_C*.so")) + list(Path(spec.origin).parent.glob("_C*.pyd"))
    if not candidates:
        return False
    try:
        torch.ops.load_library(str(candidates[0]))
    except OSError:
        return False
    return True


def ensure_torchvision_importable() -> None:
    """Define torchvision's unconditionally used operator schemas when its C++ extension cannot load."""
    global _library
    if _library is not None or "torchvision" in sys.modules or _extension_loads():
        return
    import torch

    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        _library.define(schema)


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    """Runs :func:`ensure_torchvision_importable` once, when ``torchvision`` is about to be imported."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "torchvision":
            sys.meta_path.remove(self)  # first: the shim looks torchvision up itself
            ensure_torchvision_importable()
        return None  # the regular finders import it


def run_before_torchvision_import() -> None:
    """Arrange for the shim to run before the first ``import torchvision`` (too late if it is imported already)."""
    if "torchvision" in sys.modules or any(isinstance(f, _BeforeTorchvision) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _BeforeTorchvision())
