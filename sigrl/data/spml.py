"""COCO 2014 and VOC 2012 for single-positive multi-label learning, in Cole et al.'s layout (spec §4).

Under ``root``::

    formatted_train_images.npy, formatted_val_images.npy   image paths relative to ``image_root``
    formatted_train_labels.npy, formatted_val_labels.npy   N x K clean labels, 0/1
    formatted_train_labels_obs.npy                         the single observed positives (drawn if absent)

Splits: the official train set is split 80/20 into "train" (one observed positive per image, every other
label unknown) and "val" (clean labels, for model selection); the official val set is "test" (clean).
Cole et al. keep the VOC images under ``VOCdevkit/VOC2012/JPEGImages`` and the COCO ones under the
dataset folder itself, so ``image_root`` must be given for VOC in their layout.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from sigrl.data.common import ImageFileDataset, require_file, train_val_split
from sigrl.data.transforms import Transform
from sigrl.files import atomic_file

# Column order of Cole et al.'s formatted label files: COCO's 80 categories by ascending category id, and
# VOC's 20 classes in the devkit's (alphabetical) order. Names are ready for a prompt: COCO's official
# names as they are, VOC's compounds split into words ("diningtable" -> "dining table", "tvmonitor" ->
# "tv monitor", "pottedplant" -> "potted plant").
COCO_CLASSES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
]
VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dining table",
    "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv monitor",
]
SPML_CLASSES = {"coco": COCO_CLASSES, "voc": VOC_CLASSES}
OBSERVED_LABELS_FILE = "formatted_train_labels_obs.npy"


def draw_single_positives(labels: np.ndarray, seed: int = 1200) -> np.ndarray:
    """Keep one positive per row, chosen uniformly at random: the observed matrix (1 kept, 0 unknown).

    Consumes the random stream exactly as Cole et al.'s ``generate_observed_labels.py`` (num_pos 1,
    num_neg 0): per row, shuffle the positive indices and keep the first, then shuffle the negative ones.
    A row without positives stays all zero.
    """
    rng = np.random.RandomState(seed)
    observed = np.zeros(labels.shape, dtype=np.float32)
    for row, label_vector in enumerate(labels):
        positives = np.nonzero(label_vector == 1)[0]
        rng.shuffle(positives)
        observed[row, positives[:1]] = 1.0
        rng.shuffle(np.nonzero(label_vector != 1)[0])  # no negative is kept, but the draw advances the stream
    return observed


def _load_array(path: str, what: str) -> np.ndarray:
    try:
        return np.load(require_file(path, what), allow_pickle=False)
    except (ValueError, EOFError) as error:  # np.load's errors for a non-.npy, truncated or object file
        raise ValueError(f"{path}: not a readable .npy array ({error})") from error


def _load_official_split(root: str, phase: str, num_classes: int) -> tuple[list[str], np.ndarray]:
    """Relative image paths and the 0/1 label matrix of Cole et al.'s formatted ``phase`` ("train"/"val")."""
    images_file = os.path.join(root, f"formatted_{phase}_images.npy")
    labels_file = os.path.join(root, f"formatted_{phase}_labels.npy")
    images = _load_array(images_file, "image list")
    labels = _load_array(labels_file, "label matrix")
    if images.ndim != 1:
        raise ValueError(f"{images_file}: expected a 1-D array of paths, got shape {images.shape}")
    if labels.shape != (len(images), num_classes):
        raise ValueError(
            f"{labels_file}: shape {labels.shape} does not match ({len(images)} images in {images_file}, "
            f"{num_classes} classes)"
        )
    invalid = np.setdiff1d(labels, (0, 1))
    if invalid.size:
        raise ValueError(f"{labels_file}: labels must be 0 or 1, found {invalid.tolist()}")
    paths = [path.decode("utf-8") if isinstance(path, bytes) else str(path) for path in images.tolist()]
    return paths, labels


def _save_atomically(path: str, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` through a temporary file in the same folder, so readers never see half a file."""
    with atomic_file(path) as stream:
        np.save(stream, array)


def observed_labels(root: str, labels: np.ndarray, seed: int = 1200) -> np.ndarray:
    """The observed single positives of the official train set: loaded from ``root`` or drawn and saved.

    A saved file is checked against ``labels``: same shape, values 0/1, and exactly one observed positive,
    a true one, in every row that has a positive. ``seed`` only matters when the file is drawn.
    """
    path = os.path.join(root, OBSERVED_LABELS_FILE)
    if not os.path.exists(path):
        _save_atomically(path, draw_single_positives(labels, seed))
    observed = _load_array(path, "observed-label matrix")
    if observed.shape != labels.shape:
        raise ValueError(f"{path}: shape {observed.shape} does not match the train labels {labels.shape}")
    invalid = np.setdiff1d(observed, (0, 1))
    if invalid.size:
        raise ValueError(f"{path}: observed labels must be 0 or 1, found {invalid.tolist()}")
    if ((observed == 1) & (labels != 1)).any():
        raise ValueError(f"{path}: an observed positive is not a positive of formatted_train_labels.npy")
    if not np.array_equal((observed == 1).sum(axis=1), (labels == 1).any(axis=1).astype(int)):
        raise ValueError(f"{path}: every image with a positive label needs exactly one observed positive")
    return observed


class SinglePositive(ImageFileDataset):
    """COCO 2014 (``name="coco"``, 80 labels) or VOC 2012 (``"voc"``, 20 labels) for SPML.

    ``split`` "train": ``labels`` are +1 for the single observed positive and 0 (unknown) elsewhere, and
    items carry ``true_labels`` (the clean ±1 vector, for the IUN loss; also kept as ``.true_labels``).
    "val" and "test": clean ±1 labels. ``seed`` fixes both the 80/20 split (``val_fraction``) of the
    official train set and the draw of the observed positives. ``transform`` defaults to the 224-pixel
    test transform; ``image_root`` (default ``root``) is where the relative image paths point.
    """

    def __init__(
        self,
        root: str,
        name: str,
        split: str,
        transform: Transform | None = None,
        seed: int = 1200,
        val_fraction: float = 0.2,
        image_root: str | None = None,
    ) -> None:
        if name not in SPML_CLASSES:
            raise ValueError(f"name must be one of {sorted(SPML_CLASSES)}, got {name!r}")
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        vocabulary = SPML_CLASSES[name]
        paths, clean = _load_official_split(root, "val" if split == "test" else "train", len(vocabulary))
        if split == "test":
            rows = np.arange(len(paths))
        else:
            rows = train_val_split(len(paths), val_fraction, seed)[0 if split == "train" else 1]
        complete = torch.from_numpy(clean[rows].astype(np.float32) * 2 - 1)
        true_labels: torch.Tensor | None = None
        if split == "train":  # drawn over the whole official train set, so the file is split-independent
            labels = torch.from_numpy(observed_labels(root, clean, seed)[rows].astype(np.float32))
            true_labels = complete
        else:
            labels = complete
        image_root = root if image_root is None else image_root
        super().__init__(
            [os.path.join(image_root, paths[row]) for row in rows],
            labels,
            vocabulary,
            transform,
            true_labels=true_labels,
        )
        self.name = name
        self.split = split
