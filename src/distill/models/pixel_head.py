"""Pixel head: MAE-style linear patch prediction, so pixels decode even without an MAE teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PixelHead(nn.Module):
    """Token grid [B, h, w, D] -> image [B, 3, h*p, w*p] in [0, 1] image space (unclamped: the loss sees it raw).

    The prediction is a learned ``canvas`` (one image at the training resolution, resampled for
    others) plus what the tokens add. The trainer starts the canvas at the mean training image
    (:meth:`set_canvas`), so from the first step every bit of the head's work goes to what differs
    between frames instead of first rediscovering the static background.
    """

    def __init__(self, in_dim: int, patch_size: int, image_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.norm = nn.LayerNorm(in_dim)
        self.linear = nn.Linear(in_dim, patch_size * patch_size * 3)
        # Zero start: the first prediction is the canvas itself, not the canvas plus random patches
        # whose error the early steps would spend undoing (the linear layer still gets gradients).
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.canvas = nn.Parameter(torch.full((1, 3, image_size, image_size), 0.5))

    @torch.no_grad()
    def set_canvas(self, image: torch.Tensor) -> None:
        """Start the canvas at ``image`` [3, S, S] in [0, 1] (e.g. the mean training image), resampled to its size."""
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"canvas image must be [3, H, W], got {tuple(image.shape)}")
        height, width = self.canvas.shape[-2:]
        self.canvas.copy_(resize_canvas(image[None].to(self.canvas), (height, width)))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, h, w, _ = tokens.shape
        p = self.patch_size
        patches = self.linear(self.norm(tokens))  # [B, h, w, p*p*3], per patch in (row, col, channel) order
        residual = (
            patches.reshape(batch, h, w, p, p, 3).permute(0, 5, 1, 3, 2, 4).reshape(batch, 3, h * p, w * p)
        )
        return residual + resize_canvas(self.canvas, (h * p, w * p))


def resize_canvas(canvas: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(canvas.shape[-2:]) == tuple(size):
        return canvas
    return F.interpolate(canvas, size=size, mode="bilinear", align_corners=False, antialias=True)


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, H/p, W/p, p*p*3], the inverse of the head's unpatchify (pixel targets per token)."""
    batch, channels, height, width = images.shape
    p = patch_size
    x = images.reshape(batch, channels, height // p, p, width // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(batch, height // p, width // p, p * p * channels)
