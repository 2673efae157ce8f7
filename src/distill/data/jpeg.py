"""Stored JPEG views -> uint8 tensors, checked against the dataset's canonical size.

Pillow decodes (torchvision's JPEG decoder is deprecated in favour of torchcodec, which the
project does not depend on). Pillow releases the GIL while decoding, so decoding threads scale.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError


def decode_view(jpeg: bytes, size: int, where: str) -> torch.Tensor:
    """One stored canonical view -> ``uint8 [3, size, size]``; ``where`` names shard and key in errors."""
    return decode_view_hwc(jpeg, size, where).permute(2, 0, 1).contiguous()


def decode_view_hwc(jpeg: bytes, size: int, where: str) -> torch.Tensor:
    """One stored canonical view -> ``uint8 [size, size, 3]`` as Pillow decodes it (channels last).

    ``.permute(2, 0, 1)`` of it is the view :func:`decode_view` returns; the training loader
    copies that strided view straight into its batch (one copy instead of two).
    """
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
    return torch.from_numpy(array)
