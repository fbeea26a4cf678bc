"""gRPC clients of a served SigRL repository (``tritonclient``).

:class:`SigRLClient` talks to the public ``sigrl`` model: encoded image bytes and label names in,
scores and top labels out. :class:`TritonRuntime` talks to the two engine models directly and is an
:class:`~sigrl.deploy.runtimes.EngineRuntime`, so parity checks and benchmarks treat the server like
any in-process runtime.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from sigrl.deploy.runtimes import EngineRuntime
from sigrl.serving.backend import ENTRY_MODEL, PARAM_DEFAULT_VOCABULARY


def _grpc():
    try:
        import tritonclient.grpc as grpcclient
    except ImportError as err:
        raise RuntimeError('tritonclient is missing: pip install -c constraints.txt -e ".[serve]"') from err
    return grpcclient


def _input(name: str, array: np.ndarray, datatype: str):
    tensor = _grpc().InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


@dataclass
class Tagging:
    """What the server said about one image: every label's score and the top labels, best first."""

    image: str
    scores: dict[str, float]
    top: list[tuple[str, float]] = field(default_factory=list)


class SigRLClient:
    """Client of the ``sigrl`` entry model: tag images against a vocabulary chosen per request."""

    def __init__(self, url: str = "127.0.0.1:8001", timeout_s: float | None = 60.0) -> None:
        self.url, self.timeout_s = url, timeout_s
        self.client = _grpc().InferenceServerClient(url)

    def is_ready(self) -> bool:
        return self.client.is_server_ready() and self.client.is_model_ready(ENTRY_MODEL)

    def infer(self, images: list[bytes], labels: list[str] | None = None,
              top_k: int = 5) -> tuple[np.ndarray, list[list[tuple[str, float]]]]:
        """Scores N×C and the top-k (label, score) per image, for encoded images in one request.

        ``labels=None`` uses the repository's default vocabulary.
        """
        count = len(images)
        inputs = [_input("image", np.array([[b] for b in images], dtype=object), "BYTES"),
                  _input("top_k", np.full((count, 1), top_k, dtype=np.int32), "INT32")]
        if labels is not None:
            encoded = np.array([[name.encode() for name in labels]] * count, dtype=object)
            inputs.append(_input("labels", encoded, "BYTES"))
        result = self.client.infer(ENTRY_MODEL, inputs, client_timeout=self.timeout_s)
        top_labels, top_scores = result.as_numpy("top_labels"), result.as_numpy("top_scores")
        tops = [[(name.decode(), float(score)) for name, score in zip(names, scores)]
                for names, scores in zip(top_labels, top_scores)]
        return result.as_numpy("scores"), tops

    def vocabulary(self) -> list[str]:
        """The default vocabulary: the labels the served model was trained on."""
        config = self.client.get_model_config(ENTRY_MODEL, as_json=True)["config"]
        return json.loads(config["parameters"][PARAM_DEFAULT_VOCABULARY]["string_value"])

    def tag(self, names: list[str], images: list[bytes], labels: list[str] | None = None,
            top_k: int = 5) -> list[Tagging]:
        """:meth:`infer` for named images, as one :class:`Tagging` per image."""
        scores, tops = self.infer(images, labels, top_k)
        vocabulary = labels if labels is not None else self.vocabulary()
        return [Tagging(name, {label: float(s) for label, s in zip(vocabulary, row)}, top)
                for name, row, top in zip(names, scores, tops)]

    def close(self) -> None:
        self.client.close()


class TritonRuntime(EngineRuntime):
    """The served ``text_gmc`` and ``image_svfr`` models, called over gRPC."""

    name = "triton"

    def __init__(self, url: str = "127.0.0.1:8001") -> None:
        self.url = url
        self.client = _grpc().InferenceServerClient(url)

    @property
    def provider(self) -> str:
        return f"triton grpc {self.url}"

    def _encode_labels(self, token_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = self.client.infer("text_gmc", [_input("token_ids", token_ids, "INT32")])
        return result.as_numpy("label_emb"), result.as_numpy("graph_emb")

    def _score_images(self, images: np.ndarray, label_emb: np.ndarray, graph_emb: np.ndarray) -> np.ndarray:
        inputs = [_input("images", images, "FP32"), _input("label_emb", label_emb, "FP32"),
                  _input("graph_emb", graph_emb, "FP32")]
        return self.client.infer("image_svfr", inputs).as_numpy("scores")
