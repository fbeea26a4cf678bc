"""Pieces shared by the dataset readers: the item format, image loading, subsets and splits.

Every dataset item is ``{"image": FloatTensor[3, H, W], "labels": FloatTensor[C], "index": int}`` with
labels +1 (present), -1 (absent) or 0 (unknown); single-positive training items add ``"true_labels"``
(the clean ±1 vector). Every dataset exposes ``vocabulary`` (class names in column order) and ``labels``
(the full [N, C] float tensor of its targets) so that evaluation and EM_APL's pseudo-labeller can read
the targets without decoding a single image. ``index`` is the row of ``labels`` the item came from.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from sigrl.data.transforms import Transform, build_transform


@runtime_checkable
class MultiLabelDataset(Protocol):
    """What the trainer and the evaluator rely on: items as dicts plus the whole label matrix."""

    vocabulary: list[str]
    labels: Tensor

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


def data_loader(dataset: MultiLabelDataset, **options: Any) -> DataLoader:
    """A DataLoader over a multi-label dataset: every reader here is a torch ``Dataset`` (the protocol says what
    else it offers), so this is the one place that tells the type checker."""
    return DataLoader(cast(Dataset, dataset), **options)


def load_rgb(path: str) -> Image.Image:
    """Open an image file with PIL as RGB; a missing or unreadable file is an error naming its path."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except UnidentifiedImageError as error:
        raise ValueError(f"image file is not a readable image: {path}") from error


class ImageFileDataset(Dataset):
    """Images read from files on demand, with their targets held in memory as one [N, C] tensor.

    ``transform`` defaults to the 224-pixel test transform of :func:`build_transform`.
    """

    def __init__(
        self,
        image_paths: Sequence[str],
        labels: Tensor,
        vocabulary: Sequence[str],
        transform: Transform | None = None,
        true_labels: Tensor | None = None,
    ) -> None:
        if labels.shape != (len(image_paths), len(vocabulary)):
            raise ValueError(
                f"labels have shape {tuple(labels.shape)}, expected ({len(image_paths)}, {len(vocabulary)})"
            )
        self.image_paths = list(image_paths)
        self.labels = labels.float()
        self.vocabulary = list(vocabulary)
        self.transform = transform if transform is not None else build_transform(224, is_training=False)
        self.true_labels = None if true_labels is None else true_labels.float()

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {
            "image": self.transform(load_rgb(self.image_paths[index])),
            # clone: a row view would drag the whole [N, C] storage along when sent between processes
            "labels": self.labels[index].clone(),
            "index": int(index),
        }
        if self.true_labels is not None:
            item["true_labels"] = self.true_labels[index].clone()
        return item


class LabelledSubset(Dataset):
    """Rows ``indices`` of a dataset, keeping ``vocabulary`` and ``labels`` and renumbering ``index``.

    Like :class:`torch.utils.data.Subset` (same ``dataset`` and ``indices`` attributes), but items report
    their position in the subset, so ``subset.labels[item["index"]]`` is the item's own row, which is what
    per-sample bookkeeping (EM_APL's pseudo-labels) needs.
    """

    def __init__(self, dataset: MultiLabelDataset, indices: Sequence[int] | np.ndarray) -> None:
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        self.vocabulary = list(dataset.vocabulary)
        self.labels = dataset.labels[torch.as_tensor(self.indices, dtype=torch.long)]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[self.indices[index]])
        item["index"] = int(index)
        return item


def train_val_split(n: int, val_fraction: float = 0.1, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` at random into sorted, disjoint train and validation index arrays.

    The validation part has ``round(val_fraction * n)`` elements. The draw is Cole et al.'s
    ``generate_split`` (one ``RandomState(seed).permutation(n)``; train = its head, val = its tail), so the
    SPML splits coincide with the published ones for the same seed.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = int(np.round(val_fraction * n))
    permutation = np.random.RandomState(seed).permutation(n)
    return np.sort(permutation[: n - n_val]), np.sort(permutation[n - n_val :])


def require_file(path: str, what: str) -> str:
    """Return ``path`` if it is a file; otherwise raise FileNotFoundError saying which input is missing."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    return path
