"""Turning decoded values into RGB: a depth colormap with an explicit range, and mask overlays.

Ranges are arguments, never computed per image here, so the caller can give the student row and
the teacher row (and every frame of a video) the same normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# Inferno, sampled at 9 evenly spaced points and linearly interpolated (no matplotlib dependency).
_INFERNO = np.array(
    [
        (0, 0, 4),
        (31, 12, 72),
        (85, 15, 109),
        (136, 34, 106),
        (186, 54, 85),
        (227, 89, 51),
        (249, 140, 10),
        (249, 201, 50),
        (252, 255, 164),
    ],
    dtype=np.float64,
)

# Twenty well-separated colours (tab20 order) for masks, cycled when there are more.
PALETTE = np.array(
    [
        (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
        (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
        (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
        (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
    ],
    dtype=np.uint8,
)  # fmt: skip
MASK_ALPHA = 0.6


@dataclass(frozen=True)
class ValueRange:
    """A closed range [low, high] used to normalise depth for display."""

    low: float
    high: float

    @classmethod
    def covering(cls, values: Sequence[torch.Tensor]) -> ValueRange:
        """The min..max over all tensors together (e.g. student and teacher depth, all frames)."""
        finite = [v.detach().float().cpu() for v in values if v.numel()]
        if not finite:
            raise ValueError("cannot compute a display range over no values")
        low = min(float(v.min()) for v in finite)
        high = max(float(v.max()) for v in finite)
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError("depth contains NaN or inf; check the checkpoint and its stats")
        return cls(low, high if high > low else low + 1.0)


def colormap(values: np.ndarray, value_range: ValueRange) -> np.ndarray:
    """Values [H, W] -> uint8 RGB [H, W, 3] through inferno; ``value_range`` maps to the ends."""
    t = np.clip(
        (values.astype(np.float64) - value_range.low) / (value_range.high - value_range.low), 0.0, 1.0
    )
    position = t * (len(_INFERNO) - 1)
    index = np.minimum(position.astype(np.int64), len(_INFERNO) - 2)
    frac = (position - index)[..., None]
    rgb = _INFERNO[index] * (1.0 - frac) + _INFERNO[index + 1] * frac
    return np.rint(rgb).astype(np.uint8)


def overlay_masks(base: np.ndarray, masks: Sequence[np.ndarray]) -> np.ndarray:
    """Paint boolean masks [H, W] over ``base`` uint8 [H, W, 3]; mask i gets palette colour i.

    Callers pass masks largest first (see :func:`masks_by_area`), so small masks stay visible.
    """
    out = base.astype(np.float64)
    for i, mask in enumerate(masks):
        if mask.shape != base.shape[:2]:
            raise ValueError(f"mask {i} has shape {mask.shape}, the image is {base.shape[:2]}")
        colour = PALETTE[i % len(PALETTE)].astype(np.float64)
        out[mask] = out[mask] * (1.0 - MASK_ALPHA) + colour * MASK_ALPHA
    return np.rint(out).astype(np.uint8)


def masks_by_area(records: Sequence[dict[str, Any]]) -> list[np.ndarray]:
    """segment-anything mask records -> their boolean masks, largest area first."""
    ordered = sorted(records, key=lambda r: int(r["area"]), reverse=True)
    return [np.asarray(r["segmentation"], dtype=bool) for r in ordered]
