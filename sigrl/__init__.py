"""SigRL: semantic-guided representation learning for multi-label image recognition.

The public API is loaded on first use (PEP 562), so ``import sigrl`` and the torch-free parts
(``sigrl.serving.client``, ``sigrl tag``) start without importing torch or open_clip.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import version as _version
from typing import TYPE_CHECKING, Any

from sigrl._compat import run_before_torchvision_import

__version__ = _version("sigrl")

run_before_torchvision_import()  # torchvision's operator shim, before timm/open_clip import it

if TYPE_CHECKING:  # what the lazy attributes below resolve to, for type checkers and IDEs
    from sigrl import metrics
    from sigrl.checkpoint import load_checkpoint
    from sigrl.config import DEFAULT_TEMPLATE, SigRLConfig
    from sigrl.factory import create_model, create_model_and_transforms, get_model_config, load_clip_weights
    from sigrl.model import SigRL
    from sigrl.registry import list_models
    from sigrl.tokenizer import tokenize

_LAZY = {
    "DEFAULT_TEMPLATE": "sigrl.config", "SigRL": "sigrl.model", "SigRLConfig": "sigrl.config",
    "create_model": "sigrl.factory", "create_model_and_transforms": "sigrl.factory",
    "get_model_config": "sigrl.factory", "list_models": "sigrl.registry", "load_checkpoint": "sigrl.checkpoint",
    "load_clip_weights": "sigrl.factory", "metrics": "sigrl.metrics", "tokenize": "sigrl.tokenizer",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'sigrl' has no attribute {name!r}")
    module = import_module(_LAZY[name])
    value = module if module.__name__ == f"sigrl.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
