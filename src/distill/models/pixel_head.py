"""Pixel head: MAE-style linear patch prediction, so pixels decode even without an MAE teacher."""

from __future__ import annotations

import torch
from torch import nn


class PixelHead(nn.Module):
    """Token grid [B, h, w, D] -> image [B, 3, h*p, w*p] in [0, 1] image space (unclamped: the loss sees it raw)."""

    def __init__(self, in_dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.norm = nn.LayerNorm(in_dim)
        self.linear = nn.Linear(in_dim, patch_size * patch_size * 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, h, w, _ = tokens.shape
        p = self.patch_size
        patches = self.linear(self.norm(tokens))  # [B, h, w, p*p*3], per patch in (row, col, channel) order
        return patches.reshape(batch, h, w, p, p, 3).permute(0, 5, 1, 3, 2, 4).reshape(batch, 3, h * p, w * p)


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, H/p, W/p, p*p*3], the inverse of the head's unpatchify (pixel targets per token)."""
    batch, channels, height, width = images.shape
    p = patch_size
    x = images.reshape(batch, channels, height // p, p, width // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(batch, height // p, width // p, p * p * channels)
