"""Encoded images from clients → the pixels the image engine takes, with every step's size bounded first.

:class:`ImagePreprocessor` opens each image reading only its header, checks its pixels against the
per-image and per-request caps and what the evaluation transform's resize would produce against
``max_resized_pixels``, and only then decodes, shows it as displayed (:func:`to_rgb`) and applies
:class:`sigrl.preprocess.EvalTransform`. Shared by the served entry model and in-process comparisons;
torch-free.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sigrl.preprocess import EvalTransform
from sigrl.serving.protocol import EntryLimits, RequestError

# Formats the entry model decodes (PIL would open many more, some through external programs).
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
BACKGROUND = (255, 255, 255)  # transparent pixels are shown on white, as a browser page shows them
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
_READABLE = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr")


class ImageError(RequestError):
    """An image is refused: not a supported format, corrupt, or over a cap; the message names the image."""


def _grey_8bit(image: Image.Image) -> Image.Image:
    """16-bit (or 32-bit integer) grey scaled to 8 bits, rounding to nearest (``convert`` would clip at 255).

    Integer arithmetic in 32 bits: ``(v + 128) // 257`` equals ``round(v / 257)`` for every 16-bit ``v``.
    """
    grey: np.ndarray = np.asarray(image, dtype=np.int64 if image.mode == "I" else np.uint32)
    scaled = np.clip((grey + 128) // 257, 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, "L")


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as displayed, in 8-bit RGB.

    EXIF orientation is applied; 16-bit grey is scaled to 8 bits; transparency (alpha channels, palette
    transparency) is flattened onto :data:`BACKGROUND` (``convert`` would show the colours hidden under
    transparent pixels). ImageError for modes with no such meaning (e.g. float pixels).
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in _SIXTEEN_BIT:
        image = _grey_8bit(image)
    if image.mode in _ALPHA or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba).convert("RGB")
    if image.mode not in _READABLE:
        raise ImageError(f"pixel mode {image.mode} is not one this server reads")
    return image.convert("RGB")


class ImagePreprocessor:
    """Encoded images → pixels N×3×S×S, each step's output bounded before it runs.

    ``params`` is the transform the engines were exported with (their ``preprocess`` metadata: image size,
    mean, std); ``limits`` the caps (None: unbounded, for trusted in-process use).
    """

    def __init__(self, params: Mapping[str, Any], limits: EntryLimits | None = None) -> None:
        self.transform = EvalTransform(int(params["image_size"]), tuple(params["mean"]), tuple(params["std"]))
        self.limits = limits

    def pixels(self, images: Sequence[bytes]) -> np.ndarray:
        """Decode and transform one request's images; ImageError names the first that is refused."""
        with contextlib.ExitStack() as stack:
            opened = [stack.enter_context(self._open(index, data)) for index, data in enumerate(images)]
            total = sum(image.width * image.height for image in opened)
            if self.limits is not None and total > self.limits.max_request_pixels:
                raise ImageError(f"the images of this request have {total} pixels in all, over the limit of "
                                 f"{self.limits.max_request_pixels} per request")
            return np.stack([self.transform(self._decode(index, image)) for index, image in enumerate(opened)])

    def _open(self, index: int, data: bytes) -> Image.Image:
        """The image with only its header read, its size and the size of its resize checked."""
        try:
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        except UnidentifiedImageError:
            raise ImageError(f"image {index} is not in a format this server reads "
                             f"({', '.join(IMAGE_FORMATS)})") from None
        except Exception as err:  # decoders of untrusted bytes raise many types (OSError, SyntaxError, ...)
            raise ImageError(f"image {index} cannot be decoded: {err}") from None
        if self.limits is None:
            return image
        width, height = image.size
        problem = None
        if width * height > self.limits.max_image_pixels:
            problem = f"is {width}x{height} pixels, over the limit of {self.limits.max_image_pixels} pixels per image"
        elif self.transform.output_pixels(width, height) > self.limits.max_resized_pixels:
            resized = self.transform.output_pixels(width, height)
            problem = (f"is {width}x{height} pixels: resizing its shorter side to {self.transform.shorter_side} would "
                       f"make {resized} pixels, over the limit of {self.limits.max_resized_pixels} (too elongated)")
        if problem:
            image.close()
            raise ImageError(f"image {index} {problem}")
        return image

    def _decode(self, index: int, image: Image.Image) -> Image.Image:
        """The image decoded as displayed; its size is checked again (a decoder may report another than its header)."""
        try:
            image.load()
            shown = to_rgb(image)
        except ImageError as err:
            raise ImageError(f"image {index}: {err}") from None
        except Exception as err:
            raise ImageError(f"image {index} cannot be decoded: {err}") from None
        if self.limits is not None and self.transform.output_pixels(*shown.size) > self.limits.max_resized_pixels:
            raise ImageError(f"image {index} decodes to {shown.width}x{shown.height} pixels, which the resize would "
                             f"make over {self.limits.max_resized_pixels} pixels")
        return shown
