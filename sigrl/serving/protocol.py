"""The served repository's names and limits, owned here: what clients, the repository builder and the served
models share (no torch, no Triton).

The entry model ``sigrl`` takes ``image`` (BYTES, [N, 1]: encoded images), optional ``labels`` (BYTES,
[N, C]: one identical row of label names per image) and optional ``top_k`` (INT32, [N, 1]), and answers
``scores`` (FP32, [N, C]), ``top_labels`` (BYTES, [N, K]) and ``top_scores`` (FP32, [N, K]); a repository
built with thresholds also answers ``tags`` (BYTES, [N, T]: each image's labels at or above their
thresholds, best first, rows padded with empty names). Its config publishes the default vocabulary, the
prompt template and the request limits as ``parameters`` (clients check a label list against them before
sending an image). See docs/serving.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

ENTRY_MODEL = "sigrl"

INPUT_IMAGE = "image"
INPUT_LABELS = "labels"
INPUT_TOP_K = "top_k"
OUTPUT_SCORES = "scores"
OUTPUT_TOP_LABELS = "top_labels"
OUTPUT_TOP_SCORES = "top_scores"
OUTPUT_TAGS = "tags"

# Config parameters (``parameters { key: ... }``), all string values. The entry limits' keys are the field
# names of EntryLimits.
PARAM_DEFAULT_VOCABULARY = "default_vocabulary"  # JSON list of label names
PARAM_PROMPT_TEMPLATE = "prompt_template"  # each label is scored as this sentence, "{}" the label name
PARAM_PREPROCESS = "preprocess"  # JSON: the evaluation transform the engines were exported with
PARAM_CACHE_SIZE = "cache_size"  # vocabularies kept encoded
PARAM_TOKENIZER_CACHE_SIZE = "tokenizer_cache_size"  # BPE words kept tokenised
PARAM_THREADS = "intra_op_threads"  # ONNX Runtime threads per engine session; 0: its default (one per core)
PARAM_PRECISION = "precision"  # an engine model's precision, for operators and clients reading its config

# The settings file in each python model's version folder, written by the repository builder (not shown to clients).
SETTINGS_FILE = "sigrl.json"
SETTING_CONFIG = "config"  # the model configuration the engines were exported from
SETTING_MAX_CLASSES = "max_classes"  # the largest vocabulary the engines were exported for (`sigrl export`)
SETTING_VOCABULARY = "vocabulary"
SETTING_PROMPT_TEMPLATE = "prompt_template"
SETTING_BPE_VOCAB = "bpe_vocab"  # the tokenizer's vocabulary file, relative to the version folder
SETTING_ENGINE_FILE = "engine_file"  # an engine model's ONNX file, relative to its version folder
SETTING_LOCAL_ENGINES = "local_engines"  # {engine: ONNX file relative to the repository}, run in the entry's stub
SETTING_THRESHOLDS = "thresholds"  # {label: threshold, "*": default}: the entry model answers ``tags``

# A refused label list (not an image) starts its INVALID_ARGUMENT message with this: a client then stops
# rather than retrying the request's images one by one.
LABELS_ERROR = "labels: "


@dataclass(frozen=True)
class EntryLimits:
    """What the entry model accepts (its config parameters, all set by ``sigrl triton-repo``).

    Each cap bounds the work of one step before the step runs, so that one request can neither exhaust
    memory nor hold the others for long: bytes before anything is decoded, pixels from the image headers
    before any pixel is decoded, the size the resize would produce before it runs (an image of a few
    hundred bytes can ask for a resize of billions of pixels), label characters before the tokenizer runs
    (BPE cost grows with the square of a word's length) and tokens before the text engine runs (a longer
    prompt would be silently cut).
    """

    max_image_bytes: int = 20 * 2**20
    max_request_bytes: int = 32 * 2**20
    max_image_pixels: int = 25_000_000
    max_request_pixels: int = 25_000_000
    max_resized_pixels: int = 4 * 2**20
    max_labels: int = 1024
    max_label_chars: int = 200
    max_label_tokens: int = 67  # what fits the context with the default prompt template
    default_top_k: int = 5

    @classmethod
    def from_parameters(cls, params: Mapping[str, str]) -> EntryLimits:
        """The limits from a config's parameters (keys are the field names; absent ones keep their default)."""
        return cls(**{name: int(params[name]) for name in cls.__dataclass_fields__ if name in params})

    def to_parameters(self) -> dict[str, int]:
        return asdict(self)


class RequestError(ValueError):
    """A request's inputs are invalid: answered with INVALID_ARGUMENT for that request only."""


class LabelError(RequestError):
    """The request's label list is refused (whatever its images): the message starts with :data:`LABELS_ERROR`."""

    def __init__(self, message: str) -> None:
        super().__init__(LABELS_ERROR + message)
