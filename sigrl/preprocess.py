"""The evaluation transform, torch-free: bicubic resize of the shorter side, centre crop, normalise.

One implementation for every place an image meets a trained model outside training: ``sigrl eval``
(through :func:`sigrl.data.transforms.build_transform`), the served entry model, in-process comparisons
and the engine metadata that records the transform. It reproduces torchvision's ``Resize`` (shorter side,
bicubic, PIL), ``CenterCrop``, ``ToTensor`` and ``Normalize`` bit for bit (the test suite checks), in
PIL and numpy only, and says before resizing how large the resized image will be (:func:`resized_size`),
so a server can refuse an image whose resize would be huge however small its file is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_shorter_side(image_size: int) -> int:
    """The shorter side after resizing, for a centre crop of ``image_size`` (256 for 224, as CLIP evaluates)."""
    return round(image_size * 256 / 224)


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """(width, height) after resizing the shorter side to ``shorter``, the longer in proportion (rounded down,
    as torchvision does)."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


@dataclass(frozen=True)
class EvalTransform:
    """PIL RGB image → float32 array 3×S×S, S = ``image_size``: resize, centre crop, scale to [0, 1], normalise."""

    image_size: int
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")

    @property
    def shorter_side(self) -> int:
        return resize_shorter_side(self.image_size)

    def output_pixels(self, width: int, height: int) -> int:
        """How many pixels the resize of a ``width``×``height`` image makes (before the crop)."""
        new_width, new_height = resized_size(width, height, self.shorter_side)
        return new_width * new_height

    def __call__(self, image: Image.Image) -> np.ndarray:
        new_width, new_height = resized_size(image.width, image.height, self.shorter_side)
        resized = image.resize((new_width, new_height), Image.Resampling.BICUBIC)
        crop = self.image_size
        left, top = round((new_width - crop) / 2.0), round((new_height - crop) / 2.0)
        pixels = np.asarray(resized.crop((left, top, left + crop, top + crop)), dtype=np.float32) / np.float32(255)
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))

    def describe(self) -> dict[str, object]:
        """The transform as engine metadata records it (``preprocess``)."""
        return {"image_size": self.image_size, "resize_shorter_side": self.shorter_side,
                "center_crop": self.image_size, "interpolation": "bicubic", "mean": list(self.mean),
                "std": list(self.std), "layout": "NCHW", "color": "RGB", "scale": "1/255"}
