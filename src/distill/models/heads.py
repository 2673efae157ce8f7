"""Per-teacher heads: a spatial head onto the teacher's grid and a summary head onto its CLS."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.features import TeacherOutput, TeacherSpec
from distill.models.config import HeadKind


def resampling_matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """[n_out, n_in]: ``F.interpolate``'s bilinear weights along one axis (half-pixel centres): a
    triangle around each output's centre in input cells, widened by the scale and normalised when the
    axis shrinks (antialiasing), the centre clamped to the edge cells when it grows."""
    exact = torch.promote_types(like.dtype, torch.float32)  # float64 stays float64
    scale = n_in / n_out
    centres = (torch.arange(n_out, dtype=exact, device=like.device) + 0.5) * scale - 0.5
    if scale <= 1.0:
        centres = centres.clamp(0.0, n_in - 1.0)
    cells = torch.arange(n_in, dtype=exact, device=like.device)
    weights = (1.0 - (cells[None, :] - centres[:, None]).abs() / max(scale, 1.0)).clamp_min(0.0)
    return (weights / weights.sum(1, keepdim=True)).to(like.dtype)


def resample_grid(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resampling of a channels-last grid [B, h, w, C] to ``size`` (half-pixel centres),
    antialiased along a side that shrinks, so a teacher grid smaller than the student's averages
    neighbouring tokens instead of skipping some.

    Two small matrix products, one per axis, rather than ``F.interpolate``: the same numbers (in fp32;
    under bf16 autocast they round like any bf16 product, within bf16 interpolate's error), but the
    backward pass is two more products, where interpolate's CUDA backward scatters every output
    gradient into its source cells with atomic adds, which serialise when a 14x14 grid feeds SAM's
    64x64 (each cell takes ~20 of them); and the grid stays channels-last, the layout of tokens,
    heads and teacher features, with no transposes around a channels-first kernel.
    """
    (h, w), (out_h, out_w) = x.shape[1:3], size
    if (h, w) == (out_h, out_w):
        return x
    batch, channels = x.shape[0], x.shape[-1]
    rows = resampling_matrix(h, out_h, x) @ x.reshape(batch, h, w * channels)  # [B, out_h, w * C]
    return resampling_matrix(w, out_w, x) @ rows.view(batch, out_h, w, channels)  # [B, out_h, out_w, C]


class SpatialHead(nn.Module):
    """Token grid [B, h, w, D] -> teacher patch features [B, th, tw, C].

    LayerNorm, resample to the teacher's grid, then a two-layer map: ``mlp`` mixes each position
    alone (1x1), ``conv`` also mixes its 3x3 neighbourhood in the first layer.

    For ``mlp`` the first layer runs on whichever grid is smaller, the student's or the teacher's:
    resampling weights sum to one, so it commutes with a per-position affine map, and mapping
    14x14 tokens before resampling to SAM's 64x64 grid costs 1/20 of mapping after it. The 1x1
    layers run channels-last as plain matrix products (their weights keep the convolution's shape).
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
        x = self.norm(tokens)
        h, w = x.shape[1:3]
        if self.mix.kernel_size != (1, 1):
            x = self.mix(resample_grid(x, self.grid).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        elif h * w < self.grid[0] * self.grid[1]:
            x = resample_grid(_pointwise(self.mix, x), self.grid)
        else:
            x = _pointwise(self.mix, resample_grid(x, self.grid))
        return _pointwise(self.out, self.act(x))


def _pointwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution applied to a channels-last grid [B, h, w, C_in] -> [B, h, w, C_out]."""
    return F.linear(x, conv.weight.flatten(1), conv.bias)


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
