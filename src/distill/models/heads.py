"""Per-teacher heads: a spatial head onto the teacher's grid and a summary head onto its CLS."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.features import TeacherOutput, TeacherSpec
from distill.models.config import HeadKind


def resample_grid(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resampling of a channels-first grid [B, C, h, w] to ``size`` (half-pixel centres).

    Antialiased when a side shrinks, so a teacher grid smaller than the student's averages
    neighbouring tokens instead of skipping some.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrinks = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrinks)


class SpatialHead(nn.Module):
    """Token grid [B, h, w, D] -> teacher patch features [B, th, tw, C].

    LayerNorm, resample to the teacher's grid, then a two-layer map: ``mlp`` mixes each position
    alone (1x1), ``conv`` also mixes its 3x3 neighbourhood in the first layer.

    For ``mlp`` the first layer runs on whichever grid is smaller, the student's or the teacher's:
    resampling weights sum to one, so it commutes with a per-position affine map, and mapping
    14x14 tokens before resampling to SAM's 64x64 grid costs 1/20 of mapping after it.
    """

    def __init__(
        self, in_dim: int, out_dim: int, grid: tuple[int, int], kind: HeadKind, hidden_dim: int
    ) -> None:
        super().__init__()
        if kind not in ("mlp", "conv"):
            raise ValueError(f"head kind must be 'mlp' or 'conv', got {kind!r}")
        self.grid = grid
        kernel = 1 if kind == "mlp" else 3
        self.norm = nn.LayerNorm(in_dim)
        self.mix = nn.Conv2d(in_dim, hidden_dim, kernel_size=kernel, padding=kernel // 2)
        self.act = nn.GELU()
        self.out = nn.Conv2d(hidden_dim, out_dim, kernel_size=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.norm(tokens).permute(0, 3, 1, 2)
        h, w = x.shape[-2:]
        if self.mix.kernel_size == (1, 1) and h * w < self.grid[0] * self.grid[1]:
            x = resample_grid(self.mix(x), self.grid)
        else:
            x = self.mix(resample_grid(x, self.grid))
        return self.out(self.act(x)).permute(0, 2, 3, 1)


class SummaryHead(nn.Module):
    """z [B, d_z] -> teacher CLS [B, C] (LayerNorm + two-layer MLP)."""

    def __init__(self, d_z: int, out_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(d_z), nn.Linear(d_z, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class TeacherHead(nn.Module):
    """One teacher's prediction: patch features from the token grid, CLS from z when the teacher has one."""

    def __init__(
        self, spec: TeacherSpec, grid_dim: int, d_z: int, kind: HeadKind, hidden_dim: int | None
    ) -> None:
        super().__init__()
        self.spec = spec
        self.spatial = SpatialHead(grid_dim, spec.channels, spec.grid, kind, hidden_dim or grid_dim)
        self.summary = (
            None if spec.cls_channels is None else SummaryHead(d_z, spec.cls_channels, hidden_dim or d_z)
        )

    def forward(self, tokens: torch.Tensor, z: torch.Tensor) -> TeacherOutput:
        return TeacherOutput(self.spatial(tokens), None if self.summary is None else self.summary(z))
