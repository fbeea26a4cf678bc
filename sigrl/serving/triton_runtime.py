"""The served ``text_gmc`` and ``image_svfr`` engine models over gRPC, as an :class:`EngineRuntime`.

Parity checks and benchmarks then treat the server like any in-process runtime. This module imports
torch (through :mod:`sigrl.deploy.runtimes`); the entry-model client, :mod:`sigrl.serving.client`, does not.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sigrl.deploy.engines import ImageSVFREngine, TextGMCEngine
from sigrl.deploy.runtimes import EngineRuntime
from sigrl.serving.client import grpc_module, infer_input, translate_errors
from sigrl.serving.protocol import PARAM_PRECISION


class TritonRuntime(EngineRuntime):
    """The served ``text_gmc`` and ``image_svfr`` models, called over gRPC."""

    name = "triton"

    def __init__(self, url: str = "127.0.0.1:8001") -> None:
        self.url = url
        self.client = grpc_module().InferenceServerClient(url)
        self.engine_precisions = {name: self._precision(name) for name in (TextGMCEngine.name, ImageSVFREngine.name)}

    @property
    def provider(self) -> str:
        return f"triton grpc {self.url}"

    def _encode_labels(self, token_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = self._infer(TextGMCEngine.name, TextGMCEngine.feeds(token_ids))
        return result.as_numpy(TextGMCEngine.LABEL_EMB), result.as_numpy(TextGMCEngine.GRAPH_EMB)

    def _score_images(self, images: np.ndarray, label_emb: np.ndarray, graph_emb: np.ndarray) -> np.ndarray:
        result = self._infer(ImageSVFREngine.name, ImageSVFREngine.feeds(images, label_emb, graph_emb))
        return result.as_numpy(ImageSVFREngine.SCORES)

    def _precision(self, model: str) -> str:
        """The precision the served engine model publishes in its config (``fp32`` when it publishes none)."""
        config = translate_errors(self.url, lambda: self.client.get_model_config(model)).config
        return config.parameters[PARAM_PRECISION].string_value if PARAM_PRECISION in config.parameters else "fp32"

    def _infer(self, model: str, feeds: dict[str, np.ndarray]) -> Any:
        """One request to an engine model (INT32 token ids, FP32 otherwise)."""
        inputs = [infer_input(name, array, "INT32" if array.dtype == np.int32 else "FP32")
                  for name, array in feeds.items()]
        return translate_errors(self.url, lambda: self.client.infer(model, inputs))
