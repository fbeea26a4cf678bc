"""Image transforms of the training recipe (spec §3): timm's RandAugment pipeline, and resize + centre crop.

Images are PIL RGB images; the output is a normalised FloatTensor[3, image_size, image_size]. The test
transform is :class:`sigrl.preprocess.EvalTransform`, the one the served models apply too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torch import Tensor
from torchvision import transforms as T

from sigrl.preprocess import EvalTransform

Transform = Callable[[Image.Image], Tensor]  # PIL image -> FloatTensor[3, H, W]


def _tensor_steps(mean: Sequence[float], std: Sequence[float]) -> list[Transform]:
    return [T.ToTensor(), T.Normalize(mean=tuple(mean), std=tuple(std))]


def to_normalized_tensor(
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD
) -> Transform:
    """PIL image -> normalised float tensor, no geometry change (what the synthetic images need)."""
    return T.Compose(_tensor_steps(mean, std))


def build_transform(
    image_size: int,
    is_training: bool,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> Transform:
    """The train or test transform of the recipe, for square inputs of side ``image_size``.

    Train: RandomResizedCrop (scale 0.08-1, bicubic), horizontal flip, RandAugment
    ``rand-m9-mstd0.5-inc1`` (timm's ``create_transform``). Test: bicubic resize of the shorter side to
    ``round(image_size * 256 / 224)``, centre crop ``image_size`` (:class:`~sigrl.preprocess.EvalTransform`;
    timm would floor the resize size: 73 px at 64 but 109 instead of 110 at 96; at 224 both give exactly
    resize 256 + centre crop 224).
    """
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if is_training:
        return create_transform(
            image_size,
            is_training=True,
            scale=(0.08, 1.0),
            hflip=0.5,
            auto_augment="rand-m9-mstd0.5-inc1",
            interpolation="bicubic",
            mean=tuple(mean),
            std=tuple(std),
        )
    return TensorTransform(EvalTransform(image_size, tuple(mean), tuple(std)))


@dataclass(frozen=True)
class TensorTransform:
    """A torch-free :class:`~sigrl.preprocess.EvalTransform` with a tensor out, as datasets and the model's API
    return images (a class, not a closure: DataLoader workers may pickle it)."""

    transform: EvalTransform

    def __call__(self, image: Image.Image) -> Tensor:
        return torch.from_numpy(self.transform(image))
