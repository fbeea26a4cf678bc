"""A synthetic multi-label dataset of coloured shapes, for training and testing the tiny model on a CPU.

The design is the one measured for ``tiny`` (docs/training.md): RGB images with 1-4 shapes on a noisy grey
background, 6 shapes x 6 colours = 12 labels. Each shape sits in its own cell of a 2 x 2 grid, so shapes
never overlap and every label is visible. Shapes are drawn without anti-aliasing in exact palette
colours, and the background is grey (R = G = B), so a palette colour occurs in an image exactly when its
label is positive.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor
from torch.utils.data import Dataset

from sigrl.data.transforms import Transform, to_normalized_tensor

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 190, 40),
    "blue": (40, 70, 230),
    "yellow": (230, 220, 40),
    "magenta": (220, 50, 220),
    "cyan": (40, 210, 220),
}
SYNTHETIC_VOCABULARY = [*SHAPES, *COLORS]
DEFAULT_SIZES = {"train": 2000, "val": 500, "test": 500}
_SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}  # one random stream per split: splits never coincide
_MAX_SHAPES = 4
_RADIUS_RANGE = (0.12, 0.2)  # circumradius as a fraction of the image side (cells are half the side)
_BACKGROUND_LEVELS = (90, 170)  # grey level of the background, drawn per image
_BACKGROUND_NOISE = 12.0  # per-pixel standard deviation of the background grey


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, color: tuple[int, int, int]
) -> None:
    """Fill ``shape`` centred at (cx, cy) with circumradius ``r``, without anti-aliasing."""
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
        return
    if shape == "square":
        h = r / np.sqrt(2)
        points = [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    elif shape == "triangle":
        points = [(cx, cy - r), (cx + r * np.sqrt(3) / 2, cy + r / 2), (cx - r * np.sqrt(3) / 2, cy + r / 2)]
    elif shape == "diamond":
        points = [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    elif shape == "cross":  # a plus sign with arms one third of its width
        a, b = r / np.sqrt(2), r / (3 * np.sqrt(2))
        points = [(cx - b, cy - a), (cx + b, cy - a), (cx + b, cy - b), (cx + a, cy - b), (cx + a, cy + b),
                  (cx + b, cy + b), (cx + b, cy + a), (cx - b, cy + a), (cx - b, cy + b), (cx - a, cy + b),
                  (cx - a, cy - b), (cx - b, cy - b)]
    elif shape == "star":  # five points, inner radius 0.45 r
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        points = list(zip(cx + radii * np.cos(angles), cy + radii * np.sin(angles)))
    else:
        raise ValueError(f"unknown shape {shape!r}")
    draw.polygon(points, fill=color)


def generate_shapes(num_images: int, image_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``num_images`` images; returns uint8 images [N, S, S, 3] and ±1 labels [N, 12]."""
    cell = image_size / 2
    levels = rng.integers(*_BACKGROUND_LEVELS, size=(num_images, 1, 1), endpoint=True)
    grey = np.clip(levels + rng.normal(0.0, _BACKGROUND_NOISE, size=(num_images, image_size, image_size)), 0, 255)
    images = np.repeat(grey.astype(np.uint8)[..., None], 3, axis=-1)
    labels = -np.ones((num_images, len(SYNTHETIC_VOCABULARY)), dtype=np.float32)
    color_names = list(COLORS)
    for i in range(num_images):
        count = int(rng.integers(1, _MAX_SHAPES, endpoint=True))
        cells = rng.choice(_MAX_SHAPES, size=count, replace=False)
        shapes = rng.integers(len(SHAPES), size=count)
        colors = rng.integers(len(COLORS), size=count)
        radii = rng.uniform(*_RADIUS_RANGE, size=count) * image_size
        offsets = rng.uniform(-1.0, 1.0, size=(count, 2))
        canvas = Image.fromarray(images[i])
        draw = ImageDraw.Draw(canvas)
        for c, s, k, r, (dx, dy) in zip(cells, shapes, colors, radii, offsets):
            slack = max(cell / 2 - r - 1, 0.0)  # how far the centre may move and keep the shape inside its cell
            cx = (c % 2 + 0.5) * cell + dx * slack
            cy = (c // 2 + 0.5) * cell + dy * slack
            _draw_shape(draw, SHAPES[s], cx, cy, r, COLORS[color_names[k]])
            labels[i, s] = 1.0
            labels[i, len(SHAPES) + k] = 1.0
        images[i] = np.asarray(canvas)
    return images, labels


class SyntheticShapes(Dataset):
    """Coloured shapes on grey noise, fixed by (seed, split) and generated in memory up front.

    Labels are +1 for every shape and colour drawn and -1 otherwise (never 0). The default transform only
    converts to a normalised tensor: crops could cut a shape out, and colour augmentation would change
    the colour labels.
    """

    def __init__(
        self,
        split: str = "train",
        num_images: int | None = None,
        image_size: int = 64,
        seed: int = 0,
        transform: Transform | None = None,
    ) -> None:
        if split not in _SPLIT_STREAMS:
            raise ValueError(f"split must be one of {sorted(_SPLIT_STREAMS)}, got {split!r}")
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16 pixels, got {image_size}")
        num_images = DEFAULT_SIZES[split] if num_images is None else num_images
        if num_images < 0:
            raise ValueError(f"num_images must be non-negative, got {num_images}")
        rng = np.random.default_rng([seed, _SPLIT_STREAMS[split]])
        self.images, labels = generate_shapes(num_images, image_size, rng)
        self.labels: Tensor = torch.from_numpy(labels)
        self.vocabulary = list(SYNTHETIC_VOCABULARY)
        self.split = split
        self.transform = transform if transform is not None else to_normalized_tensor()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "image": self.transform(Image.fromarray(self.images[index])),
            "labels": self.labels[index].clone(),
            "index": int(index),
        }
