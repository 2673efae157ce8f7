"""Spatial-softmax keypoints: where things are in the image, as coordinates inside z.

A ridge probe, a policy or a world model reads positions off z far more easily when some of z's
dimensions *are* positions. ``KeypointPooling`` turns the backbone's patch tokens into ``count``
(x, y) points: a softmax over the patches says where each point looks, and every patch adds a
bounded sub-patch offset, so a point can sit anywhere, not only at patch centres. The token decoder
reads the points back from z and draws each as a Gaussian heatmap added to its queries, which gives
it a direct way to put an object where z says it is.

Coordinates are in [0, 1] of the image (x right, y down); inside z they are centred and scaled by
``sqrt(12)`` (unit variance for a uniform position), a fixed map so the decoder inverts it exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

POSITION_SCALE = math.sqrt(12.0)


def cell_centres(grid: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
    """[h*w, 2] (x, y) centres of a patch grid's cells in [0, 1] image coordinates, raster order."""
    rows, cols = grid
    ys, xs = torch.meshgrid(
        (torch.arange(rows, device=device, dtype=torch.float32) + 0.5) / rows,
        (torch.arange(cols, device=device, dtype=torch.float32) + 0.5) / cols,
        indexing="ij",
    )
    return torch.stack([xs.flatten(), ys.flatten()], dim=1)


class KeypointPooling(nn.Module):
    """Patch tokens [B, h*w, D] on ``grid`` -> ``count`` points [B, count, 2] in [0, 1]."""

    def __init__(self, width: int, count: int) -> None:
        super().__init__()
        self.count = count
        self.norm = nn.LayerNorm(width)
        self.logits = nn.Linear(width, count)
        self.offsets = nn.Linear(width, 2 * count)

    def forward(self, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        batch, tokens, _ = patches.shape
        if tokens != grid[0] * grid[1]:
            raise ValueError(f"{tokens} patch tokens do not fill a {grid[0]}x{grid[1]} grid")
        x = self.norm(patches)
        weights = self.logits(x).softmax(dim=1)  # [B, N, K]: where each point looks
        half_cell = 0.5 / torch.tensor([grid[1], grid[0]], dtype=x.dtype, device=x.device)
        offsets = torch.tanh(self.offsets(x)).reshape(batch, tokens, self.count, 2) * half_cell
        positions = cell_centres(grid, x.device).to(x.dtype)[None, :, None] + offsets  # [B, N, K, 2]
        return (weights[..., None] * positions).sum(dim=1)


def points_to_z(points: torch.Tensor) -> torch.Tensor:
    """Points [B, K, 2] in [0, 1] -> z's keypoint dimensions [B, 2K] (centred, unit variance if uniform)."""
    return ((points - 0.5) * POSITION_SCALE).flatten(1)


def points_from_z(z_points: torch.Tensor) -> torch.Tensor:
    """z's keypoint dimensions [B, 2K] -> points [B, K, 2] in image coordinates (inverse of points_to_z)."""
    return (z_points / POSITION_SCALE + 0.5).unflatten(1, (-1, 2))


def heatmaps(points: torch.Tensor, grid: tuple[int, int], sigma: tuple[float, float]) -> torch.Tensor:
    """Points [B, K, 2] -> Gaussian bumps [B, h*w, K] at ``grid``'s cell centres.

    ``sigma`` is (x, y) in image units; fixing it in image units (one cell of the training grid)
    keeps a point's footprint the same at every resolution the decoder is asked for.
    """
    centres = cell_centres(grid, points.device).to(points.dtype)  # [N, 2]
    scale = torch.tensor(sigma, dtype=points.dtype, device=points.device)
    distance = ((centres[None, :, None] - points[:, None]) / scale).square().sum(-1)  # [B, N, K]
    return torch.exp(-0.5 * distance)
