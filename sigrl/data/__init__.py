"""Datasets and transforms: synthetic shapes, NUS-WIDE (zero-shot), COCO / VOC (single positive).

Items are dicts ``{"image", "labels", "index"}`` (plus ``"true_labels"`` for single-positive training);
every dataset has ``vocabulary`` and the full ``labels`` matrix. See :mod:`sigrl.data.common`.
Importing this package runs ``sigrl``'s torchvision shim first (parent packages import first).
"""

from sigrl.data.build import DATASET_NAMES, build_dataset
from sigrl.data.common import LabelledSubset, MultiLabelDataset, load_rgb, train_val_split
from sigrl.data.nus_wide import NusWide
from sigrl.data.spml import COCO_CLASSES, VOC_CLASSES, SinglePositive, draw_single_positives
from sigrl.data.synthetic import SYNTHETIC_VOCABULARY, SyntheticShapes
from sigrl.data.transforms import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    Transform,
    build_transform,
    to_normalized_tensor,
)

__all__ = [
    "COCO_CLASSES",
    "DATASET_NAMES",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "SYNTHETIC_VOCABULARY",
    "VOC_CLASSES",
    "LabelledSubset",
    "MultiLabelDataset",
    "NusWide",
    "SinglePositive",
    "SyntheticShapes",
    "Transform",
    "build_dataset",
    "build_transform",
    "draw_single_positives",
    "load_rgb",
    "to_normalized_tensor",
    "train_val_split",
]
