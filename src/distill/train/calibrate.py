"""Data-dependent starts and statistics: the mean image, the pixel loss scale, z batch-norm statistics.

All three read the first ``training.calibration_batches`` global batches of the train stream, which
do not depend on the number of ranks, and sum over ranks, so every world size gets the same values.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from distill.distributed import DistContext, all_reduce_sum
from distill.geometry import to_unit_float
from distill.models.student import Student

MIN_PIXEL_SCALE = 1e-4  # frames that never change would make the pixel term explode; 40 dB is plenty


@dataclass(frozen=True)
class ImageMoments:
    mean_image: torch.Tensor  # [3, S, S] in [0, 1]
    mean_image_mse: float  # the MSE of predicting every frame by the mean image


def image_moments(batches: Iterable[torch.Tensor], ctx: DistContext) -> ImageMoments:
    """Per-pixel mean of the images and the MSE it leaves, over every rank's batches."""
    first: torch.Tensor | None = None
    second: torch.Tensor | None = None
    count = 0
    for images in batches:
        x = to_unit_float(images).double()
        first = x.sum(0) if first is None else first + x.sum(0)
        second = x.square().sum(0) if second is None else second + x.square().sum(0)
        count += x.shape[0]
    if first is None or second is None:
        raise ValueError("no training images to calibrate on: the train split is empty")
    samples = torch.tensor([float(count)], dtype=first.dtype, device=first.device)
    totals = all_reduce_sum(ctx, torch.cat([first.flatten(), second.flatten(), samples]))
    size = first.numel()
    n = totals[-1]
    mean = totals[:size] / n
    mse = float((totals[size : 2 * size] / n - mean.square()).clamp_min(0).mean())
    return ImageMoments(mean.reshape(first.shape).float(), mse)


def pixel_scale(moments: ImageMoments) -> float:
    """What the pixel MSE is divided by: the mean image's MSE, so the term starts near 1."""
    return max(moments.mean_image_mse, MIN_PIXEL_SCALE)


def recalibrate(models: Iterable[Student], batches: Iterable[torch.Tensor], device: torch.device) -> None:
    """Exact z batch-norm statistics of each model's current weights over the same images."""
    images = [b.to(device) for b in batches]
    for model in models:
        model.recalibrate_z(images)
