"""Turn one input file into an RGB image, or reject it with a reason for rejected.txt.

Decisions (documented in docs/dataset_format.md):

* grayscale (``L``, ``1``), palette (``P``), ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` -> Pillow's RGB conversion;
* anything with alpha (``RGBA``, ``LA``, ``PA``, palette with transparency) is composited onto
  white, so transparent pixels do not show whatever colour the encoder left under them;
* 16-bit grayscale (``I;16*``, and ``I`` as Pillow opens some 16-bit files) is scaled 65535 -> 255;
* 32-bit float (``F``) has no defined range and is rejected;
* EXIF orientation is applied; multi-frame files (GIF, TIFF) use their first frame;
* below ``min_size`` pixels on the short side, or above ``max_pixels`` pixels (a decompression
  bomb guard that replaces Pillow's ``MAX_IMAGE_PIXELS`` for the call), the image is rejected.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default MAX_IMAGE_PIXELS
_PLAIN = frozenset({"L", "1", "CMYK", "YCbCr", "LAB", "HSV"})
_ALPHA = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


class RejectedInput(Exception):
    """An input to skip; ``reason`` goes to rejected.txt."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageLimits:
    min_size: int = 32  # shortest side, pixels
    max_pixels: int = DEFAULT_MAX_PIXELS


@contextmanager
def _pillow_limit(max_pixels: int) -> Iterator[None]:
    """Pillow's bomb check at our limit, with its warning turned into an error."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def to_rgb(image: Image.Image) -> Image.Image:
    """Any supported mode -> RGB (see the module docstring for each decision)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in _SIXTEEN_BIT:
        values = np.asarray(image).astype(np.float64)
        scaled = np.clip(values, 0, 65535) / 257.0
        return Image.fromarray(np.rint(scaled).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        raise RejectedInput(
            "32-bit float image (mode F) has no defined intensity range; save it as 8- or 16-bit"
        )
    if mode in _PLAIN or mode == "P":
        return image.convert("RGB")
    raise RejectedInput(f"unsupported image mode {mode!r}; convert it to RGB")


def load_rgb(path: Path, limits: ImageLimits) -> tuple[Image.Image, str]:
    """Open, validate and fully decode ``path``; returns the RGB image and the original mode."""
    with _pillow_limit(limits.max_pixels):
        try:
            image = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise RejectedInput(
                f"decompression bomb guard: {exc}; raise --max-pixels if the image is genuine"
            ) from exc
        except UnidentifiedImageError as exc:
            raise RejectedInput(
                "not an image Pillow can identify (wrong extension or corrupt header)"
            ) from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise RejectedInput(
                f"unreadable image header ({type(exc).__name__}: {exc}); the file is truncated or corrupt"
            ) from exc
        with image:
            width, height = image.size
            if width * height > limits.max_pixels:
                raise RejectedInput(
                    f"decompression bomb guard: {width}x{height} = {width * height} pixels exceeds "
                    f"max_pixels {limits.max_pixels}; raise --max-pixels if the image is genuine"
                )
            if min(width, height) < limits.min_size:
                raise RejectedInput(
                    f"image is {width}x{height}, below the minimum short side of {limits.min_size} px"
                )
            original_mode = image.mode
            try:
                image.load()
                oriented = ImageOps.exif_transpose(image)
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
                raise RejectedInput(
                    f"image data is truncated or corrupt ({type(exc).__name__}: {exc})"
                ) from exc
            rgb = to_rgb(oriented)
            rgb.load()
    return rgb, original_mode
