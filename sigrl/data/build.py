"""``build_dataset``: one entry point for every dataset, with the recipe's transform for each split."""

from __future__ import annotations

import os
from typing import Any

from sigrl.data.common import LabelledSubset, MultiLabelDataset, train_val_split
from sigrl.data.nus_wide import NusWide
from sigrl.data.spml import SinglePositive
from sigrl.data.synthetic import SyntheticShapes
from sigrl.data.transforms import Transform, build_transform
from sigrl.registry import DATASET_NAMES


def build_dataset(
    name: str, split: str, root: str | None = None, image_size: int = 224, image_root: str | None = None,
    **kwargs: Any
) -> MultiLabelDataset:
    """The ``split`` ("train", "val" or "test") of dataset ``name``, one of :data:`DATASET_NAMES`.

    Real datasets get the recipe's training transform for "train" and the test transform otherwise (a
    ``transform`` keyword overrides it); they need ``root``. Other keywords go to the reader:

    - "synthetic": ``num_images``, ``seed``, ``transform``; ``root`` is ignored and ``image_size`` is the
      side the images are drawn at (pass the model's input size, e.g. 64 for the tiny model). No
      augmentation: a crop could remove a shape and colour jitter would change colour labels.
    - "nus-wide": "train" and "val" are a ``train_val_split(val_fraction=0.1, seed=42)`` of the training
      images with the 925 seen labels (validation is held out from training, never the test set);
      "test" needs ``vocabulary="zsl"`` (81 unseen labels) or ``"gzsl"`` (1006).
    - "coco", "voc": ``seed``, ``val_fraction`` of :class:`SinglePositive`, and ``image_root``, the folder
      the image paths are relative to (default ``root``). ``image_root`` is None or an error for the others.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; expected one of {DATASET_NAMES}")
    if image_root is not None:
        if name not in ("coco", "voc"):
            raise ValueError(f"image_root applies to coco and voc only, not to {name!r}")
        kwargs["image_root"] = image_root
    if name == "synthetic":
        return SyntheticShapes(split, image_size=image_size, **kwargs)
    if root is None:
        raise ValueError(f"dataset {name!r} needs root, the folder holding its files")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"dataset root of {name!r} not found: {root}")
    transform = kwargs.pop("transform", None)
    if transform is None:
        transform = build_transform(image_size, is_training=split == "train")
    if name == "nus-wide":
        return _build_nus_wide(root, split, transform, **kwargs)
    return SinglePositive(root, name, split, transform=transform, **kwargs)


def _build_nus_wide(
    root: str,
    split: str,
    transform: Transform,
    vocabulary: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 42,
) -> MultiLabelDataset:
    if split == "test":
        if vocabulary not in ("zsl", "gzsl"):
            raise ValueError(f"the NUS-WIDE test split needs vocabulary='zsl' or 'gzsl', got {vocabulary!r}")
        return NusWide(root, "test", vocabulary, transform)
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    if vocabulary not in (None, "seen"):
        raise ValueError(f"the NUS-WIDE {split} split uses the seen vocabulary, got vocabulary={vocabulary!r}")
    training_images = NusWide(root, "train", "seen", transform)
    train_index, val_index = train_val_split(len(training_images), val_fraction, seed)
    return LabelledSubset(training_images, train_index if split == "train" else val_index)
