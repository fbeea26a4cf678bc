"""What the benchmarks run on: a random-weight checkpoint, its engines per precision, inputs, and runtimes.

Weights are random (seed 0): speed does not depend on them, and no pretrained CLIP is downloaded.
A runtime or precision this install cannot run raises :class:`Unavailable` with the reason, which
the suite turns into a skip and ``sigrl bench`` into a note; availability is read from signatures and
imports, never guessed from a failed call.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from sigrl.checkpoint import load_checkpoint, model_payload, save_atomic
from sigrl.data.synthetic import SyntheticShapes
from sigrl.deploy import runtimes
from sigrl.deploy.onnx_export import export_checkpoint
from sigrl.deploy.runtimes import EngineRuntime, OnnxRuntime, TorchRuntime
from sigrl.factory import create_model
from sigrl.registry import CALIBRATED_PRECISIONS
from sigrl.serving.measure import png_bytes
from sigrl.tokenizer import tokenize

if TYPE_CHECKING:
    from sigrl.serving.server import TritonServer

EAGER_PRECISIONS = ("fp32", "bf16")


class Unavailable(Exception):
    """A runtime/precision this install or machine cannot run; the message says why."""


def bench_checkpoint(config: str, work: Path) -> Path:
    """``work/<config>.pt``: the config with random weights (seed 0), written once and reused."""
    path = Path(work) / f"{config}.pt"
    if not path.is_file():
        torch.manual_seed(0)
        save_atomic(model_payload(create_model(config), []), path)
    return path


def engines_dir(checkpoint: Path, precision: str) -> Path:
    """The checkpoint's engines in ``precision``, exported once into ``<checkpoint stem>-engines-<precision>``."""
    out = checkpoint.parent / f"{checkpoint.stem}-engines-{precision}"
    if (out / "image_svfr.onnx").is_file() and (out / "text_gmc.onnx").is_file():
        return out
    export_checkpoint(checkpoint, out, precision=precision)
    return out


def torch_runtime(checkpoint: Path, precision: str, device: str = "cpu") -> TorchRuntime:
    """Eager PyTorch in ``precision`` (fp32, or bf16 where TorchRuntime can cast the model)."""
    if precision not in EAGER_PRECISIONS:
        raise Unavailable(f"eager PyTorch is measured in {', '.join(EAGER_PRECISIONS)} only, not {precision}")
    return TorchRuntime(load_checkpoint(checkpoint), device, precision=precision)


def onnx_runtime(checkpoint: Path, precision: str, device: str = "cpu", threads: int | None = None) -> OnnxRuntime:
    """ONNX Runtime on the checkpoint's engines in ``precision`` (``threads``: intra-op threads, default ORT's)."""
    if precision == "bf16" and device == "cpu":
        raise Unavailable("ONNX Runtime's CPU provider has no bf16 kernels (bf16 engines run on TensorRT or CUDA)")
    if precision in CALIBRATED_PRECISIONS:
        raise Unavailable(f"{precision} engines are Q/DQ graphs for TensorRT (ONNX Runtime runs them as simulated "
                          "quantization, which says nothing of their speed): time their plans (--trt-plans)")
    return OnnxRuntime(engines_dir(checkpoint, precision), device=device, threads=threads)


def start_server(checkpoint: Path, precision: str, threads: int | None = None) -> TritonServer:
    """The bundled Triton serving the checkpoint's engines in ``precision`` (python runtime), started; its
    engine sessions use ``threads`` intra-op threads (default ONNX Runtime's), like :func:`onnx_runtime`."""
    from sigrl.serving.repository import build_repository
    from sigrl.serving.server import TritonServer

    repo = build_repository(engines_dir(checkpoint, precision), "python", checkpoint.parent / f"repo-{precision}",
                            overwrite=True, threads=threads or 0)
    server = TritonServer(repo)
    server.start()
    return server


def tensorrt_runtime(plans: Path | None, precision: str) -> EngineRuntime:
    """TensorRT plans in ``plans/<precision>/`` on the first GPU, when tensorrt, CUDA and the plans are present."""
    if importlib.util.find_spec("tensorrt") is None:
        raise Unavailable("tensorrt is not installed (pip install -e '.[gpu]' on a CUDA machine)")
    if not torch.cuda.is_available():
        raise Unavailable("TensorRT needs a CUDA device; none is visible")
    if plans is None or not (Path(plans) / precision).is_dir():
        raise Unavailable(f"no TensorRT plans for {precision}: pass --bench-trt-plans DIR holding {precision}/*.plan")
    return runtimes.TensorRTRuntime(Path(plans) / precision, device="cuda:0")


def vocabulary(classes: int, salt: str = "") -> list[str]:
    """``classes`` distinct label names (``salt`` makes a vocabulary the server has not cached)."""
    return [f"concept number {i}{salt}" for i in range(classes)]


def token_ids(classes: int, template: str = "{}", salt: str = "") -> np.ndarray:
    """CLIP token ids C×77 of :func:`vocabulary`."""
    return tokenize(vocabulary(classes, salt), template).numpy()


def pixel_batch(batch: int, image_size: int) -> np.ndarray:
    """B×3×H×W float32 standard-normal pixels (already 'normalised'; values do not change the speed)."""
    return np.random.default_rng(0).standard_normal((batch, 3, image_size, image_size), dtype=np.float32)


def png_images(batch: int, image_size: int) -> list[bytes]:
    """``batch`` real encoded images (synthetic shapes, PNG) for the served entry model."""
    return [png_bytes(image) for image in SyntheticShapes("test", num_images=batch, image_size=image_size).images]
