"""Triton python-backend models of a SigRL model repository, and the pure logic they are made of.

Each model folder of the repository (see :mod:`sigrl.serving.repository`) holds a two-line
``model.py`` that imports one class from here as ``TritonPythonModel``, so the logic lives in the
package and the plain functions below are unit-tested without Triton:

* :class:`TextGMCModel`, :class:`ImageSVFRModel`: the two engines in ONNX Runtime (CPU), inputs
  checked against the engine specs, refused when not finite or not valid token ids (the ``python``
  runtime of the repository);
* :class:`SigRLModel`: the public entry. It validates each request against the caps of its config,
  decodes and transforms the images itself (:class:`ImagePreprocessor`: no extra hop), tokenises the
  label names with the engine's prompt template, keeps (label_emb, graph_emb) in an LRU cache keyed on
  the *ordered* label tuple (GMC makes the embeddings depend on the whole ordered list), and calls
  ``text_gmc`` (on a cache miss) and ``image_svfr`` through BLS, one ``image_svfr`` call per
  vocabulary shared by the requests of a batch.

Every client mistake is answered with INVALID_ARGUMENT naming the input; anything else with a short
INTERNAL message, the details (traceback) going to Triton's log only.

``triton_python_backend_utils`` exists only inside the Triton stub, so it is imported when a model
runs (:func:`_pb_utils`), never at module import; so is ``onnxruntime``, an optional extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import traceback
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sigrl.data.transforms import build_transform
from sigrl.deploy.engines import ImageSVFREngine, TextGMCEngine, engine_specs
from sigrl.deploy.onnx_export import read_metadata
from sigrl.deploy.runtimes import prepare_token_ids
from sigrl.model import SigRLConfig
from sigrl.serving.protocol import ENTRY_MODEL, OUTPUT_TAGS
from sigrl.thresholds import Thresholds
from sigrl.tokenizer import CONTEXT_LENGTH, _clip_tokenizer, tokenize

Vocabulary = tuple[str, ...]
Embeddings = tuple[np.ndarray, np.ndarray]  # (label_emb, graph_emb), both C×D float32

# Layout shared with sigrl.serving.repository: parameter keys, the entry model's settings file (the names
# clients see too are in sigrl.serving.protocol).
SETTINGS_FILE = "sigrl.json"
SETTING_LOCAL_ENGINES = "local_engines"  # {engine: ONNX file relative to the repository}, run in the entry's stub
SETTING_THRESHOLDS = "thresholds"  # {label: threshold, "*": default}: the entry model answers ``tags``
PARAM_PREPROCESS = "preprocess"
PARAM_CACHE_SIZE = "cache_size"
PARAM_TOKENIZER_CACHE_SIZE = "tokenizer_cache_size"
PARAM_THREADS = "intra_op_threads"  # ONNX Runtime threads per engine session; 0: its default (one per core)
# Formats the entry model decodes (PIL would open many more, some through external programs).
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
BACKGROUND = (255, 255, 255)  # transparent pixels are shown on white, as a browser page shows them


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
    """What the entry model accepts (its config parameters, all set by ``sigrl triton-repo``).

    Each cap keeps one request from stalling the others or exhausting memory: bytes are checked before
    anything is decoded, pixels from the image headers before any pixel is decoded, label characters
    before the tokenizer runs (BPE cost grows with the square of a word's length) and tokens before the
    text engine runs (a longer prompt would be silently cut).
    """

    max_image_bytes: int = 20 * 2**20
    max_request_bytes: int = 32 * 2**20
    max_image_pixels: int = 25_000_000
    max_request_pixels: int = 50_000_000
    max_labels: int = 1024
    max_label_chars: int = 200
    max_label_tokens: int = 67  # what fits the context with the default prompt template
    default_top_k: int = 5

    @classmethod
    def from_parameters(cls, params: Mapping[str, str]) -> EntryLimits:
        """The limits from a config's parameters (keys are the field names)."""
        return cls(**{name: int(params[name]) for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class EntryRequest:
    """One validated request of the entry model: N encoded images, their vocabulary and top-k."""

    images: list[bytes]
    labels: Vocabulary
    top_k: int


def validate_labels(rows: np.ndarray, max_labels: int, max_label_chars: int = 200) -> Vocabulary:
    """The label names of one request, checked: ``rows`` is N×C bytes, one identical row per image.

    Names are decoded as UTF-8 and stripped (the tokenizer strips them too, so " cat" and "cat" are
    one prompt and count as duplicates; :class:`PromptTokenizer` finds those its normalisation merges).
    Raises :class:`RequestError` naming the first problem.
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
        value = bytes(value)
        if len(value) > 4 * max_label_chars:  # no need to decode a name that cannot fit
            raise RequestError(f"label {position} is over the limit of {max_label_chars} characters")
        try:
            name = value.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise RequestError(f"label {position} is not valid UTF-8") from None
        if not name:
            raise RequestError(f"label {position} is blank")
        if len(name) > max_label_chars:
            raise RequestError(f"label {position} is {len(name)} characters, over the limit of {max_label_chars}")
        if name in positions:
            raise RequestError(f"duplicate label {name!r} at positions {positions[name]} and {position}")
        positions[name] = position
    return tuple(positions)


def validate_images(images: np.ndarray | None, max_image_bytes: int,
                    max_request_bytes: int | None = None) -> list[bytes]:
    """The encoded images of one request (N×1 bytes), each non-empty and within the byte caps."""
    if images is None:
        raise RequestError("the required input 'image' is missing")
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
    total = sum(map(len, checked))
    if max_request_bytes is not None and total > max_request_bytes:
        raise RequestError(f"the images of this request are {total} bytes in all, over the limit of "
                           f"{max_request_bytes} bytes per request")
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
    checked_images = validate_images(images, limits.max_image_bytes, limits.max_request_bytes)
    if labels is None:
        if not default_vocabulary:
            raise RequestError("no labels given and this repository has no default vocabulary")
        vocabulary = default_vocabulary
    else:
        vocabulary = validate_labels(labels, limits.max_labels, limits.max_label_chars)
    return EntryRequest(checked_images, vocabulary, validate_top_k(top_k, limits.default_top_k))


def group_by_vocabulary(vocabularies: Mapping[int, Vocabulary]) -> dict[Vocabulary, list[int]]:
    """Request indices grouped by their (ordered) vocabulary, each group in request order."""
    groups: dict[Vocabulary, list[int]] = {}
    for index, vocabulary in vocabularies.items():
        groups.setdefault(vocabulary, []).append(index)
    return groups


def tag_rows(scores: np.ndarray, labels: Vocabulary, thresholds: Thresholds) -> np.ndarray:
    """N×T UTF-8 names of each row's labels at or above their thresholds, best first, padded with b""."""
    tags = [[name.encode() for name, _ in row] for row in thresholds.tags(scores, labels)]
    width = max(map(len, tags))
    return np.array([row + [b""] * (width - len(row)) for row in tags], dtype=object).reshape(len(tags), width)


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


class BoundedCache(dict):
    """A dict that keeps at most ``capacity`` entries besides its ``pinned`` ones, dropping the oldest first.

    open_clip's BPE tokenizer caches every distinct word it has seen in a plain dict, forever: a
    server tokenising client label names would grow without bound. Its special tokens stay pinned
    (the tokenizer finds them only through the cache).
    """

    def __init__(self, pinned: Mapping[str, str], capacity: int) -> None:
        super().__init__(pinned)
        self.pinned = frozenset(pinned)
        self.capacity = capacity

    def __setitem__(self, key: str, value: str) -> None:
        super().__setitem__(key, value)
        if len(self) > self.capacity + len(self.pinned):
            oldest = next(k for k in self if k not in self.pinned)  # dicts keep insertion order
            del self[oldest]


def prompt_overhead(template: str) -> int:
    """Tokens a prompt of ``template`` has besides the label name's (start and end tokens included)."""
    return int(tokenize(["x"], template)[0].argmax())  # the EOT position: the prompt's length less "x"


def max_label_tokens(template: str) -> int:
    """The most tokens a label name may have for its prompt to fit the context with a padding slot to spare
    (a row without one may have been cut)."""
    return CONTEXT_LENGTH - 1 - prompt_overhead(template)


class PromptTokenizer:
    """Label names → token ids for ``text_gmc``, refusing what the text engine would not see as asked.

    A prompt longer than the context would be cut silently; a name holding one of the tokenizer's
    special tokens would move the EOT position the engine reads; two names that the tokenizer's
    normalisation (lower case, whitespace, HTML entities, ftfy) makes one prompt are duplicates.
    ``cache_size`` bounds the BPE word cache of the process-wide tokenizer.
    """

    def __init__(self, template: str, max_label_tokens: int, cache_size: int) -> None:
        self.template = template
        self.clip = _clip_tokenizer()
        if not isinstance(self.clip.cache, BoundedCache):
            specials = {t: t for t in ("<start_of_text>", "<end_of_text>")}
            self.clip.cache = BoundedCache(specials, cache_size)
        self.overhead = prompt_overhead(template)
        self.max_label_tokens = max_label_tokens

    def token_ids(self, labels: Vocabulary) -> np.ndarray:
        """C×L int32 token ids, cut to the longest prompt; RequestError names the first bad label."""
        ids = tokenize(list(labels), self.template).numpy()
        specials = (ids == self.clip.sot_token_id) | (ids == self.clip.eot_token_id)
        for position, row in enumerate(ids):
            tokens = int(row.argmax()) + 1 - self.overhead
            if row[-1] != 0 or tokens > self.max_label_tokens:  # a full row may have been cut
                shown = f"{tokens} tokens" if row[-1] == 0 else "more tokens than fit the text encoder"
                raise RequestError(f"label {position} has {shown}, over the limit of {self.max_label_tokens} tokens")
            if specials[position].sum() != 2:
                raise RequestError(f"label {position} contains a special token of the tokenizer")
        first: dict[bytes, int] = {}
        for position, row in enumerate(ids):
            earlier = first.setdefault(row.tobytes(), position)
            if earlier != position:
                raise RequestError(f"labels {earlier} ({labels[earlier]!r}) and {position} ({labels[position]!r}) "
                                   "are the same prompt after the tokenizer's normalisation")
        return prepare_token_ids(ids)


def check_token_ids(ids: np.ndarray, vocab_size: int, sot: int, eot: int) -> None:
    """RequestError unless every row of ``ids`` (C×L) is a prompt as the tokenizer writes it:
    SOT first, ids in ``[0, vocab_size)``, exactly one EOT, only padding zeros after it."""
    outside = np.argwhere((ids < 0) | (ids >= vocab_size))
    if len(outside):
        row, col = outside[0]
        raise RequestError(f"text_gmc: token_ids[{row}, {col}] is {ids[row, col]}, "
                           f"outside the vocabulary [0, {vocab_size})")
    for row, tokens in enumerate(ids):
        ends = np.flatnonzero(tokens == eot)
        if tokens[0] != sot or len(ends) != 1 or (tokens[1:] == sot).any() or tokens[ends[0] + 1:].any():
            raise RequestError(f"text_gmc: token_ids row {row} is not a tokenized prompt (start token {sot} first, "
                               f"one end token {eot}, then only zeros)")


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as displayed, in 8-bit RGB.

    EXIF orientation is applied; 16-bit grey is scaled to 8 bits (PIL's ``convert`` would clip it to
    white); transparency (alpha channels, palette transparency) is flattened onto :data:`BACKGROUND`
    (``convert`` would show the colours hidden under transparent pixels). RequestError for modes with
    no such meaning (e.g. float or 32-bit integer pixels).
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit grey PNG
        grey = np.asarray(image).astype(np.float64)
        image = Image.fromarray(np.clip(np.rint(grey / 257), 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba).convert("RGB")
    if image.mode not in ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr"):
        raise RequestError(f"pixel mode {image.mode} is not one this server reads")
    return image.convert("RGB")


class ImagePreprocessor:
    """Encoded images → pixels N×3×H×W: decoded as displayed (:func:`to_rgb`), then the evaluation transform.

    The transform is :func:`sigrl.data.transforms.build_transform` (bicubic resize of the shorter side,
    centre crop, normalise) with the image size, mean and std recorded in the engine metadata
    (``preprocess``). Image sizes are read from the headers and checked against ``max_image_pixels``
    and ``max_request_pixels`` before any pixel is decoded. Shared by the served entry model and
    in-process comparisons.
    """

    def __init__(self, params: Mapping[str, Any], max_image_pixels: int | None = None,
                 max_request_pixels: int | None = None) -> None:
        self.transform = build_transform(params["image_size"], False, params["mean"], params["std"])
        self.max_image_pixels, self.max_request_pixels = max_image_pixels, max_request_pixels

    def pixels(self, images: Sequence[bytes]) -> np.ndarray:
        """Decode and transform one request's images; RequestError names the first that is refused."""
        with contextlib.ExitStack() as stack:
            opened = [stack.enter_context(self._open(index, data)) for index, data in enumerate(images)]
            total = sum(image.width * image.height for image in opened)
            if self.max_request_pixels is not None and total > self.max_request_pixels:
                raise RequestError(f"the images of this request have {total} pixels in all, over the limit of "
                                   f"{self.max_request_pixels} per request")
            return np.stack([self.transform(self._decode(index, image)).numpy()
                             for index, image in enumerate(opened)])

    def _open(self, index: int, data: bytes) -> Image.Image:
        """The image with only its header read, its size checked."""
        try:
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        except UnidentifiedImageError:
            raise RequestError(f"image {index} is not in a format this server reads "
                               f"({', '.join(IMAGE_FORMATS)})") from None
        except Exception as err:  # decoders of untrusted bytes raise many types (OSError, SyntaxError, ...)
            raise RequestError(f"image {index} cannot be decoded: {err}") from None
        if self.max_image_pixels is not None and image.width * image.height > self.max_image_pixels:
            image.close()
            raise RequestError(f"image {index} is {image.width}x{image.height} pixels, over the limit of "
                               f"{self.max_image_pixels} pixels per image")
        return image

    @staticmethod
    def _decode(index: int, image: Image.Image) -> Image.Image:
        try:
            image.load()
            return to_rgb(image)
        except RequestError as err:
            raise RequestError(f"image {index}: {err}") from None
        except Exception as err:
            raise RequestError(f"image {index} cannot be decoded: {err}") from None


# ---------------------------------------------------------------- Triton models


def _error_response(message: str, invalid_argument: bool = False) -> Any:
    """A failed response for one request (INVALID_ARG for bad inputs, INTERNAL otherwise)."""
    pb = _pb_utils()
    code = pb.TritonError.INVALID_ARG if invalid_argument else pb.TritonError.INTERNAL
    return pb.InferenceResponse(error=pb.TritonError(message, code))


def _internal_error(model: str, err: BaseException) -> Any:
    """INTERNAL for a failure that is not the client's: the details go to Triton's log, never to the client."""
    _pb_utils().Logger.log_error(f"{model}: {''.join(traceback.format_exception(err))}")
    return _error_response(f"{model}: internal error ({type(err).__name__}); details are in the server log")


def _response(outputs: Mapping[str, np.ndarray]) -> Any:
    pb = _pb_utils()
    return pb.InferenceResponse(output_tensors=[pb.Tensor(name, array) for name, array in outputs.items()])


def _input(request: Any, name: str) -> np.ndarray | None:
    """A request's input as numpy, or None when the (optional) input is absent."""
    tensor = _pb_utils().get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _answer_each(model: str, requests: list[Any], answer: Callable[[Any], Mapping[str, np.ndarray]]) -> list[Any]:
    """Responses of ``answer`` per request: RequestError → INVALID_ARG, anything else → INTERNAL."""
    responses = []
    for request in requests:
        try:
            responses.append(_response(answer(request)))
        except RequestError as err:
            responses.append(_error_response(str(err), invalid_argument=True))
        except Exception as err:  # one request's failure only; the model keeps serving
            responses.append(_internal_error(model, err))
    return responses


class EngineSession:
    """One exported engine in an ONNX Runtime CPU session, with the checks a served engine applies to its inputs.

    ONNX Runtime's threads stop spinning when a run ends (``session.force_spinning_stop``): in a server,
    Triton, its stubs and the gRPC threads share the cores, and threads spinning between runs take them
    from the others. Results are those of
    :class:`sigrl.deploy.runtimes.OnnxRuntime` bit for bit (whatever precision the graph computes in, its
    inputs and outputs are float32).
    """

    def __init__(self, path: Path, threads: int = 0) -> None:
        import onnxruntime as ort  # an optional extra (cpu/gpu), as in sigrl.deploy.runtimes

        self.config = SigRLConfig(**json.loads(read_metadata(path)["config"]))
        self.spec = next(spec for spec in engine_specs(self.config) if path.name == spec.file_name)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.force_spinning_stop", "1")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def check(self, feeds: Mapping[str, np.ndarray | None]) -> None:
        """RequestError naming the input whose name, dtype, shape or values are wrong: non-finite floats,
        token ids that are not a tokenized prompt (ids beyond the vocabulary would fail the gather)."""
        engine = self.spec.name
        missing = [name for name, array in feeds.items() if array is None]
        if missing:
            raise RequestError(f"{engine}: the required input {missing[0]!r} is missing")
        try:
            self.spec.check_inputs(feeds)
        except ValueError as err:
            raise RequestError(str(err)) from None
        for name, array in feeds.items():
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise RequestError(f"{engine}: input {name!r} holds NaN or infinite values")
        if "token_ids" in feeds:
            tokenizer = _clip_tokenizer()
            check_token_ids(feeds["token_ids"], self.config.text_cfg["vocab_size"], tokenizer.sot_token_id,
                            tokenizer.eot_token_id)

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> list[np.ndarray]:
        """The engine's ``outputs`` (default: all, in spec order) for ``feeds``, unchecked."""
        return self.session.run(list(outputs or self.spec.output_names), dict(feeds))


class _EngineModel:
    """An exported engine served by the python backend: :class:`EngineSession` from its version folder."""

    engine: ClassVar[str]

    def initialize(self, args: dict[str, str]) -> None:
        threads = int(model_parameters(args["model_config"]).get(PARAM_THREADS, 0))
        self.engine_session = EngineSession(version_dir(args) / f"{self.engine}.onnx", threads)

    def run(self, request: Any) -> dict[str, np.ndarray]:
        spec = self.engine_session.spec
        feeds = {name: _input(request, name) for name in spec.input_names}
        self.engine_session.check(feeds)
        return dict(zip(spec.output_names, self.engine_session.run(feeds)))

    def execute(self, requests: list[Any]) -> list[Any]:
        return _answer_each(self.engine, requests, self.run)


class TextGMCModel(_EngineModel):
    """``text_gmc``: token ids C×L int32 → label_emb, graph_emb C×D float32."""

    engine = "text_gmc"


class ImageSVFRModel(_EngineModel):
    """``image_svfr``: images B×3×H×W and a vocabulary's (label_emb, graph_emb) → scores B×C."""

    engine = "image_svfr"


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


class PushedCounters:
    """Triton Prometheus counters (``/metrics``) that follow totals kept in the stub, through :meth:`push`.

    Each change of a custom metric is a message from the stub to the server, so totals are pushed once
    per ``execute``, not per event. Without metrics (``--allow-metrics=false``) nothing is pushed.
    """

    def __init__(self, name: str, description: str, label: str, values: Sequence[str]) -> None:
        pb = _pb_utils()
        self._pushed = dict.fromkeys(values, 0)
        try:
            self._family = pb.MetricFamily(name=name, description=description, kind=pb.MetricFamily.COUNTER)
            self._metrics = {value: self._family.Metric(labels={label: value}) for value in values}
        except Exception as err:  # metrics turned off in this server
            pb.Logger.log_warn(f"{name}: not exported ({err})")
            self._metrics = {}

    def push(self, totals: Mapping[str, int]) -> None:
        """Add to each exported counter what its total (a count since start) gained since the last push."""
        for value, metric in self._metrics.items():
            if totals[value] != self._pushed[value]:
                metric.increment(totals[value] - self._pushed[value])
                self._pushed[value] = totals[value]

    def close(self) -> None:
        """Release the metrics before their family (the order the python backend requires)."""
        self._metrics.clear()
        self.__dict__.pop("_family", None)


class SigRLModel:
    """``sigrl``: images (N×1 bytes) + optional labels (N×C bytes) and top_k (N×1) → scores and top labels.

    The engines run in this stub's own sessions when the settings file names their files
    (``local_engines``, the python runtime: no hop to another stub per request), else through BLS
    (GPU runtimes, where Triton runs the engines). ``execute`` is a coroutine so that the BLS calls of
    one batch's vocabulary groups overlap.
    """

    def initialize(self, args: dict[str, str]) -> None:
        params = model_parameters(args["model_config"])
        settings = json.loads((version_dir(args) / SETTINGS_FILE).read_text(encoding="utf-8"))
        self.limits = EntryLimits.from_parameters(params)
        self.cache = VocabularyCache(int(params[PARAM_CACHE_SIZE]))
        self.lookups = PushedCounters("sigrl_vocabulary_lookups_total", "Vocabularies looked up in the entry "
                                      "model's cache, by result", "result", ("hit", "miss"))
        engines = (TextGMCEngine.name, ImageSVFREngine.name)
        self.runs = PushedCounters("sigrl_engine_runs_total", "Engine runs of the entry model (in its own sessions "
                                   "or through BLS), by engine", "engine", engines)
        self.engine_runs = dict.fromkeys(engines, 0)
        self.default_vocabulary: Vocabulary = tuple(settings["vocabulary"])
        repository = Path(args["model_repository"]).parent
        threads = int(params.get(PARAM_THREADS, 0))
        self.local_engines = {name: EngineSession(repository / path, threads)
                              for name, path in settings.get(SETTING_LOCAL_ENGINES, {}).items()}
        thresholds = settings.get(SETTING_THRESHOLDS)
        self.thresholds = None if thresholds is None else Thresholds.from_json(thresholds, SETTINGS_FILE)
        self.tokenizer = PromptTokenizer(settings["prompt_template"], self.limits.max_label_tokens,
                                         int(params[PARAM_TOKENIZER_CACHE_SIZE]))
        self.preprocessor = ImagePreprocessor(json.loads(params[PARAM_PREPROCESS]), self.limits.max_image_pixels,
                                              self.limits.max_request_pixels)

    async def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        parsed: dict[int, EntryRequest] = {}
        for index, request in enumerate(requests):
            try:
                parsed[index] = parse_request(_input(request, "image"), _input(request, "labels"),
                                              _input(request, "top_k"), self.limits, self.default_vocabulary)
            except RequestError as err:
                responses[index] = _error_response(str(err), invalid_argument=True)
            except Exception as err:
                responses[index] = _internal_error(ENTRY_MODEL, err)
        groups = group_by_vocabulary({index: entry.labels for index, entry in parsed.items()})
        answers = await asyncio.gather(*(self._answer_group(labels, [parsed[i] for i in members])
                                         for labels, members in groups.items()))
        for members, answer in zip(groups.values(), answers):
            for index, response in zip(members, answer):
                responses[index] = response
        self.lookups.push({"hit": self.cache.hits, "miss": self.cache.misses})
        self.runs.push(self.engine_runs)
        return responses

    async def _answer_group(self, labels: Vocabulary, entries: list[EntryRequest]) -> list[Any]:
        """Responses for requests sharing one vocabulary: their images scored in one ``image_svfr`` call."""
        try:
            embeddings = await self._embeddings(labels)
        except RequestError as err:
            return [_error_response(str(err), invalid_argument=True)] * len(entries)
        except Exception as err:
            return [_internal_error(ENTRY_MODEL, err)] * len(entries)
        responses: list[Any] = [None] * len(entries)
        pixels = {}
        for position, entry in enumerate(entries):
            try:
                pixels[position] = self.preprocessor.pixels(entry.images)
            except RequestError as err:
                responses[position] = _error_response(str(err), invalid_argument=True)
            except Exception as err:
                responses[position] = _internal_error(ENTRY_MODEL, err)
        if not pixels:
            return responses
        try:
            (scores,) = await self._engine("image_svfr", {"images": np.concatenate(list(pixels.values())),
                                                  "label_emb": embeddings[0], "graph_emb": embeddings[1]}, ["scores"])
        except Exception as err:  # a failed engine call fails this group's requests, never the model
            for position in pixels:
                responses[position] = _internal_error(ENTRY_MODEL, err)
            return responses
        counts = [len(entries[p].images) for p in pixels]
        for position, rows in zip(pixels, np.split(scores, np.cumsum(counts)[:-1])):
            names, values = top_k(rows, labels, entries[position].top_k)
            outputs = {"scores": rows, "top_labels": names, "top_scores": values}
            if self.thresholds is not None:
                outputs[OUTPUT_TAGS] = tag_rows(rows, labels, self.thresholds)
            responses[position] = _response(outputs)
        return responses

    async def _embeddings(self, labels: Vocabulary) -> Embeddings:
        """(label_emb, graph_emb) of ``labels``: from the cache, else from ``text_gmc`` (then cached)."""
        cached = self.cache.get(labels)
        if cached is not None:
            return cached
        token_ids = self.tokenizer.token_ids(labels)  # as OnnxRuntime.encode_labels, after the checks
        label_emb, graph_emb = await self._engine("text_gmc", {"token_ids": token_ids}, ["label_emb", "graph_emb"])
        self.cache.put(labels, (label_emb, graph_emb))
        return label_emb, graph_emb

    async def _engine(self, model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        """The ``outputs`` of engine ``model`` for ``inputs``: in this stub's session if it has one, else by BLS."""
        self.engine_runs[model] += 1
        session = self.local_engines.get(model)
        if session is None:
            return await _bls(model, inputs, outputs)
        return session.run(inputs, outputs)

    def finalize(self) -> None:
        """Log how well the vocabulary cache served (Triton's log, at unload)."""
        _pb_utils().Logger.log_info(f"sigrl vocabulary cache: {self.cache.hits} hits, {self.cache.misses} misses, "
                                    f"{len(self.cache)}/{self.cache.capacity} vocabularies kept")
        self.lookups.close()
        self.runs.close()
