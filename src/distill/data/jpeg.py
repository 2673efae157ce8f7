"""Stored JPEG views -> uint8 tensors, checked against the dataset's canonical size.

The stored views are colour (YCbCr) or grey JPEGs that organize wrote with Pillow. simplejpeg
decodes those straight into the array returned (libjpeg-turbo, the library Pillow uses, with the
same default IDCT and upsampling, so the same pixels: tested), at a third of the CPU of Pillow's
decode plus its copy out of the image; a loader worker decodes one per sample. Anything else,
and any JPEG simplejpeg refuses (it treats libjpeg's warnings as errors), goes to Pillow, which
decides and words the error as before. Both release the GIL while decoding.
"""

from __future__ import annotations

import io

import numpy as np
import simplejpeg
import torch
from PIL import Image, UnidentifiedImageError

# JPEG colour spaces simplejpeg decodes to RGB exactly as Pillow does (CMYK and Adobe RGB go to Pillow)
_DIRECT = ("YCbCr", "Gray")


def decode_view(jpeg: bytes, size: int, where: str) -> torch.Tensor:
    """One stored canonical view -> ``uint8 [3, size, size]``; ``where`` names shard and key in errors."""
    return decode_view_hwc(jpeg, size, where).permute(2, 0, 1).contiguous()


def decode_view_hwc(jpeg: bytes, size: int, where: str) -> torch.Tensor:
    """One stored canonical view -> ``uint8 [size, size, 3]`` as Pillow decodes it (channels last).

    ``.permute(2, 0, 1)`` of it is the view :func:`decode_view` returns; the training loader
    copies that strided view straight into its batch (one copy instead of two).
    """
    array = _decoded_direct(jpeg, size)
    return torch.from_numpy(array if array is not None else _decoded_by_pillow(jpeg, size, where))


def _decoded_direct(jpeg: bytes, size: int) -> np.ndarray | None:
    """The view decoded by simplejpeg, or None where Pillow must decode it (or word its error)."""
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(jpeg)
        if (height, width) != (size, size) or colorspace not in _DIRECT:
            return None
        array: np.ndarray = simplejpeg.decode_jpeg(
            jpeg, "RGB", fastdct=False, fastupsample=False, strict=True
        )
    except ValueError:
        return None
    return array


def _decoded_by_pillow(jpeg: bytes, size: int, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(jpeg)) as image:
            array = np.array(image if image.mode == "RGB" else image.convert("RGB"))
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise ValueError(
            f"{where}: the stored JPEG does not decode ({exc}); rebuild the image shard with organize"
        ) from exc
    if array.shape != (size, size, 3):
        raise ValueError(
            f"{where}: image is {array.shape[:2]}, the manifest's canonical size is {size}; rebuild the shard"
        )
    return array
