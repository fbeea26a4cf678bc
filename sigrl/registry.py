"""The names users choose between (model configs, datasets, losses), readable without importing torch.

The ``sigrl`` command builds its parser from these on every call, ``sigrl tag`` included, so this
module imports nothing heavy; the modules that implement the names import them from here.
"""

from __future__ import annotations

from importlib import resources

CONFIG_PACKAGE = "sigrl.model_configs"

DATASET_NAMES = ("synthetic", "nus-wide", "coco", "voc")
SPML_KINDS = ("an", "iun", "em", "em_apl")  # single-positive losses (sigrl.losses)
LOSSES = ("rank", *SPML_KINDS)  # "rank": the zero-shot ranking loss


def list_models() -> list[str]:
    """Names accepted by :func:`sigrl.create_model` (one JSON file each in ``sigrl/model_configs``)."""
    files = resources.files(CONFIG_PACKAGE).iterdir()
    return sorted(f.name.removesuffix(".json") for f in files if f.name.endswith(".json"))


# Engine precisions (sigrl.precision); torch runs the first three. int8: ONNX Runtime dynamic quantization (CPU);
# int8-qdq and fp8: explicit Q/DQ graphs calibrated on images, for TensorRT.
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int8-qdq", "fp8")
CALIBRATED_PRECISIONS = ("int8-qdq", "fp8")  # `sigrl export` needs --calibration-images for these
RUNTIMES = ("torch", "onnxruntime", "onnx-reference", "tensorrt")  # sigrl.deploy.runtimes.create_runtime
MAX_CLASSES = 1024  # the largest vocabulary (C) engines take by default (`sigrl export --max-classes`)
EVAL_PRECISIONS = ("fp32", "bf16")  # what evaluation scores the PyTorch model in (sigrl.evaluation)
HARDWARE_COMPAT = ("none", "ampere+")  # `sigrl build-engines --hardware-compat` (sigrl.deploy.tensorrt)
# `sigrl triton-repo` (sigrl.serving.repository): what Triton runs the engines with, how the entry model reaches
# them, and the precision modes of ONNX Runtime's TensorRT accelerator
SERVED_RUNTIMES = ("python", "onnxruntime", "tensorrt")
ENTRY_ENGINES = ("local", "bls")
ORT_TENSORRT_PRECISIONS = ("FP32", "FP16", "BF16", "INT8")
