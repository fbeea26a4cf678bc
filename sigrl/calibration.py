"""Per-class decision thresholds that maximise F1 on a validation split (what ``sigrl calibrate`` writes).

A label is predicted when its score is at least its threshold. For each class, every cut between two
distinct scores of the images labelled ±1 for it is a candidate (images labelled 0, unknown, are left
out); the cut with the highest F1 wins, and the threshold is the midpoint between the lowest score kept
and the highest score rejected, so scores that move by rounding (another runtime, another precision)
stay on their side. Classes without a positive have no F1 to maximise: they get the global threshold,
the one that maximises F1 over all labelled (image, class) pairs pooled together.

Scores are normalised across the label set, so thresholds hold for the vocabulary they were
calibrated with (same labels, same order), not for another one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sigrl.thresholds import GLOBAL_KEY


@dataclass
class Calibration:
    """Thresholds per class and the global fallback, with the F1 each reaches on the calibration data."""

    thresholds: dict[str, float]  # every class; classes without positives hold the global threshold
    f1: dict[str, float]  # per-class F1 at its own threshold (classes without positives left out)
    global_threshold: float
    global_f1: float
    fallback: list[str]  # classes without positives, which use the global threshold

    def to_json(self) -> dict[str, float]:
        """``{label: threshold, ..., "*": global}``, the format ``sigrl tag --thresholds`` reads."""
        return {**self.thresholds, GLOBAL_KEY: self.global_threshold}


def best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float] | None:
    """(threshold, F1) maximising F1 of ``score >= threshold`` against ``labels`` (+1 / −1; 0 entries are
    ignored), or None when no entry is positive. On equal F1 the highest threshold wins."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels differ in size: {scores.shape} vs {labels.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    known = labels != 0
    scores, positive = scores[known], labels[known] > 0
    num_positive = int(positive.sum())
    if num_positive == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], positive[order]
    true_pos = np.cumsum(hits)
    predicted = np.arange(1, len(ranked) + 1)
    f1 = 2 * true_pos / (predicted + num_positive)  # 2TP / (2TP + FP + FN), FP + TP = predicted
    cut_allowed = np.append(ranked[:-1] > ranked[1:], True)  # never split a group of equal scores
    f1 = np.where(cut_allowed, f1, -1.0)
    best = int(np.argmax(f1))
    threshold = ranked[best] if best == len(ranked) - 1 else (ranked[best] + ranked[best + 1]) / 2
    return float(threshold), float(f1[best])


def f1_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """F1 of predicting ``score >= threshold`` against ``labels`` (+1 / −1; 0 entries ignored); 0 without positives."""
    known = np.asarray(labels) != 0
    predicted = np.asarray(scores)[known] >= threshold
    positive = np.asarray(labels)[known] > 0
    denominator = predicted.sum() + positive.sum()
    return float(2 * (predicted & positive).sum() / denominator) if denominator else 0.0


def calibrate_thresholds(scores: np.ndarray, labels: np.ndarray, vocabulary: Sequence[str]) -> Calibration:
    """Per-class F1-maximising thresholds for ``scores`` [N, C] against ``labels`` [N, C] (+1, −1, 0 unknown)."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.ndim != 2 or scores.shape != labels.shape or scores.shape[1] != len(vocabulary):
        raise ValueError(f"need scores and labels of shape [N, {len(vocabulary)}], got {scores.shape} and "
                         f"{labels.shape}")
    if len(set(vocabulary)) != len(vocabulary):
        raise ValueError("the vocabulary has duplicate labels")
    overall = best_f1_threshold(scores, labels)
    if overall is None:
        raise ValueError("the calibration data have no positive label at all")
    global_threshold, global_f1 = overall
    thresholds, f1, fallback = {}, {}, []
    for column, name in enumerate(vocabulary):
        found = best_f1_threshold(scores[:, column], labels[:, column])
        if found is None:
            thresholds[name] = global_threshold
            fallback.append(name)
        else:
            thresholds[name], f1[name] = found
    return Calibration(thresholds, f1, global_threshold, global_f1, fallback)
