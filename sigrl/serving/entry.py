"""The request logic of the served entry model ``sigrl``, as plain functions (unit-tested without Triton).

A request is checked in the order that costs least first: its byte sizes, then its label list, then its
top_k; images are decoded later (:mod:`sigrl.serving.images`), and the engines' outputs are checked too:
a request the engines cannot score (non-finite outputs) is refused, never answered with NaN.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from sigrl.serving.protocol import EntryLimits, LabelError, RequestError
from sigrl.serving.vocabulary import Vocabulary, validate_labels
from sigrl.thresholds import Thresholds


@dataclass(frozen=True)
class EntryRequest:
    """One validated request of the entry model: N encoded images, their vocabulary and top-k."""

    images: list[bytes]
    labels: Vocabulary
    top_k: int


def validate_images(images: np.ndarray | None, max_image_bytes: int,
                    max_request_bytes: int | None = None) -> list[bytes]:
    """The encoded images of one request (N×1 bytes), each non-empty and within the byte caps.

    The sizes are read before any image is copied out of the request."""
    if images is None:
        raise RequestError("the required input 'image' is missing")
    if images.ndim != 2 or images.shape[0] == 0 or images.shape[1] != 1:
        raise RequestError(f"image must have shape [images, 1] with at least one image, got {list(images.shape)}")
    sizes = [len(value) for value in images[:, 0]]
    for index, size in enumerate(sizes):
        if size == 0:
            raise RequestError(f"image {index} is empty")
        if size > max_image_bytes:
            raise RequestError(f"image {index} is {size} bytes, over the limit of {max_image_bytes} bytes")
    if max_request_bytes is not None and sum(sizes) > max_request_bytes:
        raise RequestError(f"the images of this request are {sum(sizes)} bytes in all, over the limit of "
                           f"{max_request_bytes} bytes per request")
    return [bytes(value) for value in images[:, 0]]


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


def parse_request(images: np.ndarray | None, labels: np.ndarray | None, top_k: np.ndarray | None,
                  limits: EntryLimits, default_vocabulary: Vocabulary) -> EntryRequest:
    """Validate one entry request's tensors; an absent ``labels`` means the default vocabulary."""
    checked_images = validate_images(images, limits.max_image_bytes, limits.max_request_bytes)
    if labels is None:
        if not default_vocabulary:
            raise LabelError("no labels given and this repository has no default vocabulary")
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


def check_embeddings(label_emb: np.ndarray, graph_emb: np.ndarray) -> None:
    """LabelError when the text engine's outputs for a label list are not all finite (nothing to score with)."""
    for name, values in (("label", label_emb), ("graph", graph_emb)):
        bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
        if len(bad):
            raise LabelError(f"the text engine cannot encode label {int(bad[0])}: its {name} embedding is not "
                             "finite")


def unscorable_images(scores: np.ndarray) -> list[int]:
    """Rows of ``scores`` (N×C) that hold NaN or infinite values: images the engine could not score."""
    return np.flatnonzero(~np.isfinite(scores).all(axis=1)).tolist()


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
