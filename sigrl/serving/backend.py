"""Triton python-backend models of a SigRL model repository, and the pure logic they are made of.

Each model folder of the repository (see :mod:`sigrl.serving.repository`) holds a two-line
``model.py`` that imports one class from here as ``TritonPythonModel``, so the logic lives in the
package and the plain functions below are unit-tested without Triton:

* :class:`TextGMCModel`, :class:`ImageSVFRModel`: the two engines in ONNX Runtime (CPU), inputs
  checked against the engine specs (the ``python`` runtime of the repository);
* :class:`PreprocessModel`: encoded image bytes → the evaluation transform's normalised pixels;
* :class:`SigRLModel`: the public entry. It validates each request, tokenises the label names with
  the engine's prompt template, keeps (label_emb, graph_emb) in an LRU cache keyed on the *ordered*
  label tuple (GMC makes the embeddings depend on the whole ordered list), and calls ``preprocess``,
  ``text_gmc`` (on a cache miss) and ``image_svfr`` through BLS, one ``image_svfr`` call per
  vocabulary shared by the requests of a batch.

``triton_python_backend_utils`` exists only inside the Triton stub, so it is imported when a model
runs (:func:`_pb_utils`), never at module import; so is ``onnxruntime``, an optional extra.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from sigrl.data.transforms import build_transform
from sigrl.deploy.engines import engine_specs
from sigrl.deploy.onnx_export import read_metadata
from sigrl.deploy.runtimes import prepare_token_ids
from sigrl.model import SigRLConfig
from sigrl.tokenizer import tokenize

Vocabulary = tuple[str, ...]
Embeddings = tuple[np.ndarray, np.ndarray]  # (label_emb, graph_emb), both C×D float32

# Layout shared with sigrl.serving.repository: model names, parameter keys, the entry model's settings file.
PREPROCESS_MODEL = "preprocess"
ENTRY_MODEL = "sigrl"
SETTINGS_FILE = "sigrl.json"
PARAM_PREPROCESS = "preprocess"
PARAM_MAX_IMAGE_BYTES = "max_image_bytes"
PARAM_MAX_LABELS = "max_labels"
PARAM_CACHE_SIZE = "cache_size"
PARAM_DEFAULT_TOP_K = "default_top_k"
PARAM_DEFAULT_VOCABULARY = "default_vocabulary"  # JSON list, published for clients (the model reads sigrl.json)


def _pb_utils() -> ModuleType:
    """The python backend's utility module (only importable inside the Triton stub)."""
    import triton_python_backend_utils

    return triton_python_backend_utils


def model_parameters(model_config: str) -> dict[str, str]:
    """The ``parameters`` of a model config (the JSON Triton hands to ``initialize``) as {key: string_value}."""
    return {key: value["string_value"] for key, value in json.loads(model_config).get("parameters", {}).items()}


def version_dir(args: Mapping[str, str]) -> Path:
    """The model's version folder (``<repository>/<model>/<version>``) from ``initialize``'s args."""
    return Path(args["model_repository"]) / args["model_version"]


class RequestError(ValueError):
    """A request's inputs are invalid: answered with an error for that request only."""


class BLSError(RuntimeError):
    """A BLS call to another model of the repository answered with an error."""


# ---------------------------------------------------------------- pure logic of the entry model


@dataclass(frozen=True)
class EntryLimits:
    """What the entry model accepts: caps from the config parameters and the top-k used when none is asked."""

    max_image_bytes: int
    max_labels: int
    default_top_k: int


@dataclass(frozen=True)
class EntryRequest:
    """One validated request of the entry model: N encoded images, their vocabulary and top-k."""

    images: list[bytes]
    labels: Vocabulary
    top_k: int


def validate_labels(rows: np.ndarray, max_labels: int) -> Vocabulary:
    """The label names of one request, checked: ``rows`` is N×C bytes, one identical row per image.

    Names are decoded as UTF-8 and stripped (the tokenizer strips them too, so " cat" and "cat" are
    one prompt and count as duplicates). Raises :class:`RequestError` naming the first problem.
    """
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise RequestError(f"labels must have shape [images, labels], got {list(rows.shape)}")
    for image, row in enumerate(rows[1:], start=1):
        if not np.array_equal(row, rows[0]):
            raise RequestError(f"the labels of image {image} differ from those of image 0: "
                               "all images of a request are scored against one label list")
    raw = rows[0]
    if len(raw) == 0:
        raise RequestError("the label list is empty")
    if len(raw) > max_labels:
        raise RequestError(f"{len(raw)} labels, more than the {max_labels} this server accepts")
    positions: dict[str, int] = {}
    for position, value in enumerate(raw):
        try:
            name = bytes(value).decode("utf-8").strip()
        except UnicodeDecodeError:
            raise RequestError(f"label {position} is not valid UTF-8") from None
        if not name:
            raise RequestError(f"label {position} is blank")
        if name in positions:
            raise RequestError(f"duplicate label {name!r} at positions {positions[name]} and {position}")
        positions[name] = position
    return tuple(positions)


def validate_images(images: np.ndarray, max_image_bytes: int) -> list[bytes]:
    """The encoded images of one request (N×1 bytes), each non-empty and at most ``max_image_bytes``."""
    if images.ndim != 2 or images.shape[0] == 0 or images.shape[1] != 1:
        raise RequestError(f"image must have shape [images, 1] with at least one image, got {list(images.shape)}")
    checked = []
    for index, value in enumerate(images[:, 0]):
        data = bytes(value)
        if not data:
            raise RequestError(f"image {index} is empty")
        if len(data) > max_image_bytes:
            raise RequestError(f"image {index} is {len(data)} bytes, over the limit of {max_image_bytes} bytes")
        checked.append(data)
    return checked


def validate_top_k(values: np.ndarray | None, default: int) -> int:
    """The request's top-k (N×1 int32, one value for all its images), or ``default`` when absent."""
    if values is None:
        return default
    distinct = np.unique(values)
    if len(distinct) != 1:
        raise RequestError(f"top_k must be the same for all images of a request, got {distinct.tolist()}")
    k = int(distinct[0])
    if k < 1:
        raise RequestError(f"top_k must be at least 1, got {k}")
    return k


def parse_request(images: np.ndarray, labels: np.ndarray | None, top_k: np.ndarray | None,
                  limits: EntryLimits, default_vocabulary: Vocabulary) -> EntryRequest:
    """Validate one entry request's tensors; an absent ``labels`` means the default vocabulary."""
    checked_images = validate_images(images, limits.max_image_bytes)
    if labels is None:
        if not default_vocabulary:
            raise RequestError("no labels given and this repository has no default vocabulary")
        vocabulary = default_vocabulary
    else:
        vocabulary = validate_labels(labels, limits.max_labels)
    return EntryRequest(checked_images, vocabulary, validate_top_k(top_k, limits.default_top_k))


def group_by_vocabulary(vocabularies: Mapping[int, Vocabulary]) -> dict[Vocabulary, list[int]]:
    """Request indices grouped by their (ordered) vocabulary, each group in request order."""
    groups: dict[Vocabulary, list[int]] = {}
    for index, vocabulary in vocabularies.items():
        groups.setdefault(vocabulary, []).append(index)
    return groups


def top_k(scores: np.ndarray, labels: Vocabulary, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``min(k, C)`` best labels (UTF-8 bytes) and their scores per row of ``scores`` (N×C), best first.

    Ties keep the vocabulary order (stable sort).
    """
    order = np.argsort(-scores, axis=1, kind="stable")[:, :min(k, scores.shape[1])]
    names = np.array([label.encode() for label in labels], dtype=object)[order]
    return names, np.take_along_axis(scores, order, axis=1)


class VocabularyCache:
    """LRU cache of encoded vocabularies, keyed on the ordered label tuple; counts hits and misses."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"cache capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.hits = self.misses = 0
        self._entries: OrderedDict[Vocabulary, Embeddings] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Vocabulary) -> bool:
        return key in self._entries

    def get(self, key: Vocabulary) -> Embeddings | None:
        """The cached embeddings (now the most recently used), or None; counts a hit or a miss."""
        value = self._entries.get(key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return value

    def put(self, key: Vocabulary, value: Embeddings) -> None:
        """Store ``value`` as the most recently used entry, evicting the least recently used beyond capacity."""
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)


# ---------------------------------------------------------------- Triton models


def _error_response(message: str, invalid_argument: bool = False) -> Any:
    """A failed response for one request (INVALID_ARG for bad inputs, INTERNAL otherwise)."""
    pb = _pb_utils()
    code = pb.TritonError.INVALID_ARG if invalid_argument else pb.TritonError.INTERNAL
    return pb.InferenceResponse(error=pb.TritonError(message, code))


def _response(outputs: Mapping[str, np.ndarray]) -> Any:
    pb = _pb_utils()
    return pb.InferenceResponse(output_tensors=[pb.Tensor(name, array) for name, array in outputs.items()])


def _input(request: Any, name: str) -> np.ndarray | None:
    """A request's input as numpy, or None when the (optional) input is absent."""
    tensor = _pb_utils().get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


class _EngineModel:
    """An exported engine run by ONNX Runtime on CPU, inputs checked with the engine spec's ``check_inputs``."""

    engine: ClassVar[str]

    def initialize(self, args: dict[str, str]) -> None:
        import onnxruntime as ort  # an optional extra (cpu/gpu), as in sigrl.deploy.runtimes

        path = version_dir(args) / f"{self.engine}.onnx"
        config = SigRLConfig(**json.loads(read_metadata(path)["config"]))
        self.spec = next(spec for spec in engine_specs(config) if spec.name == self.engine)
        # the session options of OnnxRuntime(engines, device="cpu"): results equal in-process ones bit for bit
        self.session = ort.InferenceSession(str(path), ort.SessionOptions(), providers=["CPUExecutionProvider"])

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            feeds = {name: _input(request, name) for name in self.spec.input_names}
            try:
                self.spec.check_inputs(feeds)
            except ValueError as err:
                responses.append(_error_response(str(err), invalid_argument=True))
                continue
            try:
                outputs = self.session.run(self.spec.output_names, feeds)
            except Exception as err:  # onnxruntime's own exception types; one request's failure only
                responses.append(_error_response(f"{self.engine}: {err}"))
                continue
            responses.append(_response(dict(zip(self.spec.output_names, outputs))))
        return responses


class TextGMCModel(_EngineModel):
    """``text_gmc``: token ids C×L int32 → label_emb, graph_emb C×D float32."""

    engine = "text_gmc"


class ImageSVFRModel(_EngineModel):
    """``image_svfr``: images B×3×H×W and a vocabulary's (label_emb, graph_emb) → scores B×C."""

    engine = "image_svfr"


class ImagePreprocessor:
    """Encoded JPEG/PNG bytes → pixels N×3×H×W, exactly the evaluation transform.

    The transform is :func:`sigrl.data.transforms.build_transform` (bicubic resize of the shorter side,
    centre crop, normalise) with the image size, mean and std recorded in the engine metadata
    (``preprocess``). Shared by the served ``preprocess`` model and in-process comparisons.
    """

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.transform = build_transform(params["image_size"], False, params["mean"], params["std"])

    def pixels(self, images: Sequence[bytes]) -> np.ndarray:
        """Decode and transform one request's images; RequestError names the first that cannot be decoded."""
        arrays = []
        for index, data in enumerate(images):
            try:
                with Image.open(io.BytesIO(data)) as image:
                    rgb = image.convert("RGB")
            except UnidentifiedImageError:
                raise RequestError(f"image {index} is not in an image format this server reads") from None
            except Exception as err:  # decoders of untrusted bytes raise many types (OSError, SyntaxError, ...)
                raise RequestError(f"image {index} cannot be decoded: {err}") from None
            arrays.append(self.transform(rgb).numpy())
        return np.stack(arrays)


class PreprocessModel(ImagePreprocessor):
    """``preprocess``: encoded image bytes (N×1) → pixels (:class:`ImagePreprocessor` inside Triton)."""

    def __init__(self) -> None:
        """Triton constructs the model without arguments; :meth:`initialize` builds the transform."""

    def initialize(self, args: dict[str, str]) -> None:
        super().__init__(json.loads(model_parameters(args["model_config"])[PARAM_PREPROCESS]))

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                pixels = self.pixels([bytes(v) for v in _input(request, "image")[:, 0]])
            except RequestError as err:
                responses.append(_error_response(str(err), invalid_argument=True))
                continue
            responses.append(_response({"pixels": pixels}))
        return responses


async def _bls(model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
    """Run ``model`` on ``inputs`` through BLS and return copies of the requested outputs.

    The copies own their memory: the outputs outlive the BLS response (the cache keeps embeddings).
    """
    pb = _pb_utils()
    request = pb.InferenceRequest(model_name=model, requested_output_names=list(outputs),
                                  inputs=[pb.Tensor(name, array) for name, array in inputs.items()])
    response = await request.async_exec()
    if response.has_error():
        raise BLSError(f"{model}: {response.error().message()}")
    return [np.array(pb.get_output_tensor_by_name(response, name).as_numpy(), copy=True) for name in outputs]


class SigRLModel:
    """``sigrl``: images (N×1 bytes) + optional labels (N×C bytes) and top_k (N×1) → scores and top labels.

    ``execute`` is a coroutine so that the BLS calls of one batch run concurrently: the per-request
    ``preprocess`` calls meet in that model's dynamic batcher, and the vocabulary groups overlap.
    """

    def initialize(self, args: dict[str, str]) -> None:
        params = model_parameters(args["model_config"])
        settings = json.loads((version_dir(args) / SETTINGS_FILE).read_text(encoding="utf-8"))
        self.limits = EntryLimits(int(params[PARAM_MAX_IMAGE_BYTES]), int(params[PARAM_MAX_LABELS]),
                                  int(params[PARAM_DEFAULT_TOP_K]))
        self.cache = VocabularyCache(int(params[PARAM_CACHE_SIZE]))
        self.default_vocabulary: Vocabulary = tuple(settings["vocabulary"])
        self.template: str = settings["prompt_template"]

    async def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        parsed: dict[int, EntryRequest] = {}
        for index, request in enumerate(requests):
            try:
                parsed[index] = parse_request(_input(request, "image"), _input(request, "labels"),
                                              _input(request, "top_k"), self.limits, self.default_vocabulary)
            except RequestError as err:
                responses[index] = _error_response(str(err), invalid_argument=True)
        groups = group_by_vocabulary({index: entry.labels for index, entry in parsed.items()})
        answers = await asyncio.gather(*(self._answer_group(labels, [parsed[i] for i in members])
                                         for labels, members in groups.items()))
        for members, answer in zip(groups.values(), answers):
            for index, response in zip(members, answer):
                responses[index] = response
        return responses

    async def _answer_group(self, labels: Vocabulary, entries: list[EntryRequest]) -> list[Any]:
        """Responses for requests sharing one vocabulary: their images scored in one ``image_svfr`` call."""
        pixels = await asyncio.gather(*(_bls(PREPROCESS_MODEL, {"image": _bytes_column(e.images)}, ["pixels"])
                                        for e in entries), return_exceptions=True)
        responses: list[Any] = [None] * len(entries)
        decoded = []
        for position, result in enumerate(pixels):
            if isinstance(result, BaseException):
                invalid = isinstance(result, BLSError)  # preprocess only fails on undecodable bytes
                responses[position] = _error_response(str(result), invalid_argument=invalid)
            else:
                decoded.append(position)
        if not decoded:
            return responses
        try:
            embeddings = await self._embeddings(labels)
            batch = np.concatenate([pixels[p][0] for p in decoded])
            (scores,) = await _bls("image_svfr", {"images": batch, "label_emb": embeddings[0],
                                                  "graph_emb": embeddings[1]}, ["scores"])
        except Exception as err:  # a failed engine call fails this group's requests, never the model
            for position in decoded:
                responses[position] = _error_response(str(err))
            return responses
        counts = [len(entries[p].images) for p in decoded]
        for position, rows in zip(decoded, np.split(scores, np.cumsum(counts)[:-1])):
            names, values = top_k(rows, labels, entries[position].top_k)
            responses[position] = _response({"scores": rows, "top_labels": names, "top_scores": values})
        return responses

    async def _embeddings(self, labels: Vocabulary) -> Embeddings:
        """(label_emb, graph_emb) of ``labels``: from the cache, else from ``text_gmc`` (then cached)."""
        cached = self.cache.get(labels)
        if cached is not None:
            return cached
        token_ids = prepare_token_ids(tokenize(list(labels), self.template))  # as OnnxRuntime.encode_labels
        label_emb, graph_emb = await _bls("text_gmc", {"token_ids": token_ids}, ["label_emb", "graph_emb"])
        self.cache.put(labels, (label_emb, graph_emb))
        return label_emb, graph_emb

    def finalize(self) -> None:
        """Log how well the vocabulary cache served (Triton's log, at unload)."""
        _pb_utils().Logger.log_info(f"sigrl vocabulary cache: {self.cache.hits} hits, {self.cache.misses} misses, "
                                    f"{len(self.cache)}/{self.cache.capacity} vocabularies kept")


def _bytes_column(items: Sequence[bytes]) -> np.ndarray:
    """Byte strings as an N×1 object array (Triton BYTES)."""
    column = np.empty((len(items), 1), dtype=object)
    column[:, 0] = items
    return column
