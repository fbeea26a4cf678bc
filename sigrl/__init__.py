"""SigRL: semantic-guided representation learning for multi-label image recognition."""

from importlib.metadata import version as _version

from sigrl._compat import ensure_torchvision_importable

__version__ = _version("sigrl")

ensure_torchvision_importable()  # before anything imports torchvision (timm, open_clip)

from sigrl import metrics  # noqa: E402
from sigrl.checkpoint import load_checkpoint  # noqa: E402
from sigrl.factory import create_model, get_model_config, list_models, load_clip_weights  # noqa: E402
from sigrl.model import SigRL, SigRLConfig  # noqa: E402
from sigrl.tokenizer import DEFAULT_TEMPLATE, tokenize  # noqa: E402

__all__ = [
    "DEFAULT_TEMPLATE", "SigRL", "SigRLConfig", "create_model", "get_model_config", "list_models",
    "__version__", "load_checkpoint", "load_clip_weights", "metrics", "tokenize",
]
