"""Per-class decision thresholds as ``sigrl calibrate`` writes them, and the tags they give (no torch).

The file is a JSON object ``{"label": threshold, ..., "*": default}``: a label is a tag of an image
when its score is at least its own threshold, or the ``"*"`` default for a label the file does not
name; without a default, a label the file does not name is never a tag. ``sigrl tag --thresholds``
applies a file on the client, ``sigrl triton-repo --thresholds`` makes the served entry model apply it
(its ``tags`` output). Scores are normalised across the label set, so thresholds hold best for the
vocabulary they were calibrated with.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GLOBAL_KEY = "*"


@dataclass(frozen=True)
class Thresholds:
    """Thresholds per label name, and the default for labels without one (None: never a tag)."""

    per_label: Mapping[str, float]
    default: float | None = None

    @classmethod
    def from_json(cls, values: object, source: str = "thresholds") -> Thresholds:
        """From a parsed JSON object; ValueError naming ``source`` unless every value is a finite number."""
        if not isinstance(values, dict) or not values:
            raise ValueError(f'{source} must hold a non-empty JSON object '
                             f'{{"label": threshold, "{GLOBAL_KEY}": default}}')
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{source}: the threshold of {name!r} must be a finite number, got {value!r}")
        per_label = {str(name): float(value) for name, value in values.items() if name != GLOBAL_KEY}
        default = values.get(GLOBAL_KEY)
        return cls(per_label, None if default is None else float(default))

    @classmethod
    def read(cls, path: str | Path) -> Thresholds:
        """From a JSON file; ValueError naming the file when it is not valid thresholds, OSError when unreadable."""
        try:
            values = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not JSON ({err.msg} at line {err.lineno})") from None
        return cls.from_json(values, str(path))

    def to_json(self) -> dict[str, float]:
        """The file's JSON object."""
        return {**self.per_label, **({} if self.default is None else {GLOBAL_KEY: self.default})}

    def of(self, labels: Sequence[str]) -> np.ndarray:
        """The threshold of each label (float64; +inf for a label that can never be a tag)."""
        fallback = math.inf if self.default is None else self.default
        return np.array([self.per_label.get(name, fallback) for name in labels], dtype=np.float64)

    def tags(self, scores: np.ndarray, labels: Sequence[str]) -> list[list[tuple[str, float]]]:
        """Per row of ``scores`` (N×C, columns in ``labels`` order): the (label, score) at or above their
        thresholds, best first (ties in vocabulary order)."""
        scores = np.asarray(scores)
        above = scores >= self.of(labels)
        order = np.argsort(-scores, axis=1, kind="stable")
        return [[(labels[c], float(row[c])) for c in ranked if keep[c]]
                for row, keep, ranked in zip(scores, above, order)]
