"""Label lists from clients → token ids for ``text_gmc``, refusing what the text engine would not see as asked;
and the cache of encoded vocabularies. Torch-free: the served entry model and the gRPC client (which checks a
label list once, before it sends any image) run the same checks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from sigrl.bpe import CONTEXT_LENGTH, ClipBPE, prompts, trim
from sigrl.serving.protocol import EntryLimits, LabelError, RequestError

Vocabulary = tuple[str, ...]
Embeddings = tuple[np.ndarray, np.ndarray]  # (label_emb, graph_emb), both C×D float32


def validate_labels(rows: np.ndarray, max_labels: int, max_label_chars: int = 200) -> Vocabulary:
    """The label names of one request, checked: ``rows`` is N×C bytes, one identical row per image.

    Names are decoded as UTF-8 and stripped (the tokenizer strips them too, so " cat" and "cat" are
    one prompt and count as duplicates; :class:`PromptTokenizer` finds those its normalisation merges).
    Raises :class:`LabelError` naming the first problem.
    """
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise LabelError(f"labels must have shape [images, labels], got {list(rows.shape)}")
    for image, row in enumerate(rows[1:], start=1):
        if not np.array_equal(row, rows[0]):
            raise LabelError(f"the labels of image {image} differ from those of image 0: "
                             "all images of a request are scored against one label list")
    raw = rows[0]
    if len(raw) == 0:
        raise LabelError("the label list is empty")
    if len(raw) > max_labels:
        raise LabelError(f"{len(raw)} labels, more than the {max_labels} this server accepts")
    positions: dict[str, int] = {}
    for position, value in enumerate(raw):
        value = bytes(value)
        if len(value) > 4 * max_label_chars:  # no need to decode a name that cannot fit
            raise LabelError(f"label {position} is over the limit of {max_label_chars} characters")
        try:
            name = value.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise LabelError(f"label {position} is not valid UTF-8") from None
        if not name:
            raise LabelError(f"label {position} is blank")
        if len(name) > max_label_chars:
            raise LabelError(f"label {position} is {len(name)} characters, over the limit of {max_label_chars}")
        if name in positions:
            raise LabelError(f"duplicate label {name!r} at positions {positions[name]} and {position}")
        positions[name] = position
    return tuple(positions)


def prompt_overhead(template: str, bpe: ClipBPE) -> int:
    """Tokens a prompt of ``template`` has besides the label name's (start and end tokens included)."""
    return int(bpe(prompts(["x"], template))[0].argmax())  # the EOT position: the prompt's length less "x"


def max_label_tokens(template: str, bpe: ClipBPE) -> int:
    """The most tokens a label name may have for its prompt to fit the context with a padding slot to spare
    (a row without one may have been cut)."""
    return CONTEXT_LENGTH - 1 - prompt_overhead(template, bpe)


class PromptTokenizer:
    """Label names → token ids for ``text_gmc`` (C×L int32, cut to the longest prompt), refusing what the text
    engine would not see as asked: a prompt longer than the context would be cut silently; a name holding one
    of the tokenizer's special tokens would move the end position the engine reads; two names that the
    tokenizer's normalisation (lower case, whitespace, HTML entities, ftfy) makes one prompt are duplicates.
    """

    def __init__(self, template: str, max_label_tokens: int, bpe: ClipBPE) -> None:
        self.template, self.max_label_tokens, self.bpe = template, max_label_tokens, bpe
        self.overhead = prompt_overhead(template, bpe)

    def token_ids(self, labels: Vocabulary) -> np.ndarray:
        """C×L int32 token ids; :class:`LabelError` names the first bad label."""
        ids = self.bpe(prompts(labels, self.template))
        specials = (ids == self.bpe.sot_token_id) | (ids == self.bpe.eot_token_id)
        for position, row in enumerate(ids):
            tokens = int(row.argmax()) + 1 - self.overhead
            if row[-1] != 0 or tokens > self.max_label_tokens:  # a full row may have been cut
                shown = f"{tokens} tokens" if row[-1] == 0 else "more tokens than fit the text encoder"
                raise LabelError(f"label {position} has {shown}, over the limit of {self.max_label_tokens} tokens")
            if specials[position].sum() != 2:
                raise LabelError(f"label {position} contains a special token of the tokenizer")
        first: dict[bytes, int] = {}
        for position, row in enumerate(ids):
            earlier = first.setdefault(row.tobytes(), position)
            if earlier != position:
                raise LabelError(f"labels {earlier} ({labels[earlier]!r}) and {position} ({labels[position]!r}) "
                                 "are the same prompt after the tokenizer's normalisation")
        return np.ascontiguousarray(trim(ids).astype(np.int32))


def check_vocabulary(labels: Sequence[str], limits: EntryLimits, template: str, bpe: ClipBPE) -> Vocabulary:
    """A label list checked as the entry model checks it, without a request: :class:`LabelError` if refused."""
    rows = np.array([[str(name).encode() for name in labels]], dtype=object).reshape(1, len(labels))
    vocabulary = validate_labels(rows, limits.max_labels, limits.max_label_chars)
    PromptTokenizer(template, limits.max_label_tokens, bpe).token_ids(vocabulary)
    return vocabulary


def check_token_ids(ids: np.ndarray, vocab_size: int, sot: int, eot: int) -> None:
    """RequestError unless every row of ``ids`` (C×L) is a prompt as the tokenizer writes it:
    start token first, ids in ``[0, vocab_size)``, exactly one end token, only padding zeros after it."""
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


class VocabularyCache:
    """LRU cache of encoded vocabularies, keyed on the ordered label tuple (GMC makes the embeddings depend on
    the whole ordered list); counts hits and misses."""

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
