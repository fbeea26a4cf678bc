"""CLIP's byte-pair-encoding tokenizer without torch: what the served models and the gRPC client use.

open_clip's ``SimpleTokenizer`` (behind :func:`sigrl.tokenize`) imports torch, which the served models and the
client must not load. This is the same tokenizer written for numpy: the same text cleaning (ftfy, HTML
entities, whitespace, lower case), the same pre-tokenisation pattern, the same merges from the same
vocabulary file, the same truncation (a prompt over the context keeps its first tokens and ends with the
end-of-text token). The test suite holds it to open_clip's ids on a broad set of names.

The vocabulary file (``bpe_simple_vocab_16e6.txt.gz``) is the one open_clip ships; :func:`default_vocab_file`
finds it without importing open_clip, and ``sigrl triton-repo`` copies it into a model repository so that a
server without open_clip reads it there. The BPE word cache is bounded (a server sees unbounded client text).
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import itertools
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import ftfy
import numpy as np
import regex

CONTEXT_LENGTH = 77
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
_MERGES = 49152 - 256 - 2  # merges of CLIP's vocabulary: 49,408 ids = 512 byte symbols + merges + 2 specials
SOT_TOKEN_ID = 2 * 256 + _MERGES  # the special tokens come last
EOT_TOKEN_ID = SOT_TOKEN_ID + 1
VOCAB_SIZE = EOT_TOKEN_ID + 1
_WORD_SUFFIX = "</w>"


def default_vocab_file() -> Path:
    """open_clip's copy of CLIP's vocabulary, located without importing open_clip (which imports torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{VOCAB_FILE} not found: install open_clip_torch, or pass the file's path")
    return Path(next(iter(spec.submodule_search_locations))) / VOCAB_FILE


def _byte_symbols() -> dict[int, str]:
    """One printable character per byte value, in the vocabulary's order: printable bytes stand for
    themselves and come first, the others stand for characters from 256 upwards (so no symbol is
    whitespace or a control character)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return {**{byte: chr(byte) for byte in printable}, **{byte: chr(256 + i) for i, byte in enumerate(others)}}


def clean(text: str) -> str:
    """The text as CLIP's tokenizer reads it: mojibake fixed, HTML entities decoded (twice, as CLIP does),
    runs of whitespace made one space, trimmed, lower case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


class ClipBPE:
    """Text → CLIP token ids. ``cache_size`` bounds the per-word memo (least recently used words go first)."""

    def __init__(self, vocab_file: str | Path | None = None, cache_size: int = 10_000) -> None:
        path = Path(vocab_file) if vocab_file is not None else default_vocab_file()
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            lines = handle.read().split("\n")[1:_MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        self.byte_symbols = _byte_symbols()
        symbols = list(self.byte_symbols.values())
        words = [*symbols, *(s + _WORD_SUFFIX for s in symbols), *("".join(m) for m in merges), *SPECIAL_TOKENS]
        self.ids = {word: index for index, word in enumerate(words)}
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.sot_token_id, self.eot_token_id = (self.ids[t] for t in SPECIAL_TOKENS)
        self.vocab_size = len(self.ids)
        if (self.sot_token_id, self.eot_token_id, self.vocab_size) != (SOT_TOKEN_ID, EOT_TOKEN_ID, VOCAB_SIZE):
            raise ValueError(f"{path} is not CLIP's vocabulary ({self.vocab_size} ids, not {VOCAB_SIZE})")
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        specials = "|".join(SPECIAL_TOKENS)
        self.pattern = regex.compile(specials + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                                     regex.IGNORECASE)

    def _merge(self, symbols: list[str]) -> list[str]:
        """Merge adjacent symbols, lowest-ranked pair first (every occurrence, left to right), until none merges."""
        while len(symbols) > 1:
            pairs = {(a, b) for a, b in itertools.pairwise(symbols)}
            best = min(pairs, key=lambda pair: self.ranks.get(pair, len(self.ranks)))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    def _word_ids(self, word: str) -> tuple[int, ...]:
        """The ids of one pre-tokenised word (memoised, at most ``cache_size`` words)."""
        cached = self._cache.get(word)
        if cached is not None:
            self._cache.move_to_end(word)
            return cached
        if word in SPECIAL_TOKENS:
            ids: tuple[int, ...] = (self.ids[word],)
        else:
            symbols = [self.byte_symbols[b] for b in word.encode("utf-8")]
            symbols[-1] += _WORD_SUFFIX
            ids = tuple(self.ids[s] for s in self._merge(symbols))
        if self.cache_size:
            self._cache[word] = ids
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return ids

    def encode(self, text: str) -> list[int]:
        """The ids of ``text``'s tokens, without the start and end tokens."""
        return [i for word in self.pattern.findall(clean(text)) for i in self._word_ids(word)]

    def __call__(self, texts: Sequence[str], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
        """len(texts)×context_length int64 ids: start token, the text's tokens, end token, zero padding; a
        text too long for the context keeps its first tokens and ends with the end token (as open_clip)."""
        ids = np.zeros((len(texts), context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            tokens = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(tokens) > context_length:
                tokens = [*tokens[:context_length - 1], self.eot_token_id]
            ids[row, :len(tokens)] = tokens
        return ids


@lru_cache(maxsize=4)
def clip_bpe(vocab_file: str | None = None) -> ClipBPE:
    """One shared tokenizer per vocabulary file (default: open_clip's)."""
    return ClipBPE(vocab_file)


def prompts(label_names: Sequence[str], template: str) -> list[str]:
    """Each label name, stripped, in the prompt ``template`` (``"There is a {} in the scene."``)."""
    return [template.format(name.strip()) for name in label_names]


def trim(ids: np.ndarray) -> np.ndarray:
    """Token ids cut to the longest prompt: columns after every row's end token are padding (the end token
    has the largest id of the vocabulary, so its position is the row's argmax)."""
    if ids.ndim != 2 or ids.shape[0] == 0:
        raise ValueError(f"token ids must be C×L with C >= 1, got shape {tuple(ids.shape)}")
    return ids[:, :int(ids.argmax(axis=1).max()) + 1]
