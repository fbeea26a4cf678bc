"""The served ``text_gmc`` and ``image_svfr`` engine models over gRPC, as an :class:`EngineRuntime`.

Parity checks and benchmarks then treat the server like any in-process runtime. This module imports
torch (through :mod:`sigrl.deploy.runtimes`); the entry-model client, :mod:`sigrl.serving.client`, does not.
"""

from __future__ import annotations

import numpy as np

from sigrl.deploy.engines import ImageSVFREngine, TextGMCEngine
from sigrl.deploy.runtimes import EngineRuntime
from sigrl.serving.client import grpc_module, infer_input, translate_errors


class TritonRuntime(EngineRuntime):
    """The served ``text_gmc`` and ``image_svfr`` models, called over gRPC."""

    name = "triton"

    def __init__(self, url: str = "127.0.0.1:8001") -> None:
        self.url = url
        self.client = grpc_module().InferenceServerClient(url)

    @property
    def provider(self) -> str:
        return f"triton grpc {self.url}"

    def _encode_labels(self, token_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = translate_errors(self.url, lambda: self.client.infer(
            TextGMCEngine.name, [infer_input("token_ids", token_ids, "INT32")]))
        return result.as_numpy("label_emb"), result.as_numpy("graph_emb")

    def _score_images(self, images: np.ndarray, label_emb: np.ndarray, graph_emb: np.ndarray) -> np.ndarray:
        inputs = [infer_input("images", images, "FP32"), infer_input("label_emb", label_emb, "FP32"),
                  infer_input("graph_emb", graph_emb, "FP32")]
        return translate_errors(self.url, lambda: self.client.infer(ImageSVFREngine.name, inputs)).as_numpy("scores")
