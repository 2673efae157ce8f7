"""Pixel reconstruction loss in [0, 1] image space."""

from __future__ import annotations

import torch

from distill.geometry import to_unit_float


def pixel_mse(pixels: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Mean squared error between predicted pixels [B, 3, H, W] and the input images (uint8 or float [0, 1])."""
    target = to_unit_float(images.to(pixels.device, non_blocking=True))
    if pixels.shape != target.shape:
        raise ValueError(
            f"pixel_mse: predicted pixels {tuple(pixels.shape)} and images {tuple(target.shape)} differ; "
            "pass the same images the student saw"
        )
    return (pixels.float() - target).square().mean()
