"""The CLS bottleneck: CLS -> z, and a token decoder that rebuilds a spatial grid from z alone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.models.config import ZNorm
from distill.models.keypoints import KeypointPooling, heatmaps, points_from_z, points_to_z, pooled_points
from distill.models.znorm import ZBatchNorm


class ZProjection(nn.Module):
    """Backbone tokens [B, 1 + h*w, D] -> z [B, d_z].

    The first ``d_z - 2 * keypoints`` dimensions summarise the CLS token (LayerNorm + Linear, then,
    with ``z_norm="batch"``, z batch norm); the last ``2 * keypoints`` are spatial-softmax keypoints
    of the patch tokens (models/keypoints.py), positions the decoder reads back.
    """

    def __init__(self, width: int, d_z: int, z_norm: ZNorm, keypoints: int = 0) -> None:
        super().__init__()
        summary = d_z - 2 * keypoints
        # Batch norm removes any constant shift of z, so biases before it would get a zero gradient,
        # which Adam turns into steps of full size in the direction of rounding noise: leave them out.
        shifts = z_norm != "batch"
        self.norm = nn.LayerNorm(width, bias=shifts)
        self.linear = nn.Linear(width, summary, bias=shifts)
        self.z_norm = ZBatchNorm(summary) if z_norm == "batch" else None
        self.keypoints = KeypointPooling(width, keypoints) if keypoints else None

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return self.project(tokens, grid)[0]

    def project(
        self, tokens: torch.Tensor, grid: tuple[int, int]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """z, and with keypoints their log-softmax weights [B, N, K] and candidate positions [B, N, K, 2]
        from the same pass (what the sprites' search scores), else None."""
        # fp32 whatever the autocast: z's spread across frames can be ~1/100 of its size (a static
        # scene), under bf16's rounding of z (1/256 of it), so a bf16 z would lose what tells frames apart
        with torch.autocast(tokens.device.type, enabled=False):
            z = self.linear(self.norm(tokens[:, 0].float()))
        if self.z_norm is not None:
            z = self.z_norm(z)
        if self.keypoints is None:
            return z, None
        candidates = self.keypoints.candidates(tokens[:, 1:], grid)
        return torch.cat([z, points_to_z(pooled_points(*candidates))], dim=1), candidates


def sincos_2d(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """[h*w, dim] fixed 2-D sine-cosine position codes (MAE's), rows in raster order.

    Used to initialise learned position tables: at ``std=0.02`` random tables every position looks
    alike, so neither the encoder nor the decoder can tell where anything is until they have
    learned positions from scratch, which small moving objects give almost no signal for.
    """
    if dim % 4:
        raise ValueError(f"sine-cosine position codes need a width divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(
        torch.arange(grid[0], dtype=torch.float32), torch.arange(grid[1], dtype=torch.float32), indexing="ij"
    )
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    parts = [f(axis.reshape(-1, 1) * omega) for axis in (rows, cols) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, dim=1)


class Block(nn.Module):
    """Pre-norm transformer block with SDPA attention (fused kernels on GPU)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(batch, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, dim)
        x = x + self.proj(attended)
        return x + self.mlp(self.norm2(x))


class TokenDecoder(nn.Module):
    """z [B, d_z] -> token grid [B, h, w, dim], reading nothing but z and its own parameters.

    One learned query per position of the student's patch grid, initialised to sine-cosine codes
    (resampled bicubically for another input resolution, like ViT position embeddings). z enters twice: added to every query and
    prepended as an extra token the blocks attend to; that token is dropped at the end. With
    ``keypoints``, z's last ``2 * keypoints`` dimensions are points, each drawn as a Gaussian heatmap
    (one cell of the training grid wide) that a linear map adds to the queries.
    """

    def __init__(
        self, d_z: int, dim: int, depth: int, heads: int, grid: tuple[int, int], keypoints: int = 0
    ) -> None:
        super().__init__()
        self.grid = grid
        self.keypoints = keypoints
        self.queries = nn.Parameter(sincos_2d(grid, dim)[None])
        self.z_add = nn.Linear(d_z, dim)
        self.z_token = nn.Linear(d_z, dim)
        self.heatmap_add = nn.Linear(keypoints, dim) if keypoints else None
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def positional_queries(self, grid: tuple[int, int]) -> torch.Tensor:
        """[1, h*w, dim] queries for ``grid`` (the learned table itself at the training grid)."""
        if grid == self.grid:
            return self.queries
        dim = self.queries.shape[-1]
        table = self.queries.reshape(1, *self.grid, dim).permute(0, 3, 1, 2)
        table = F.interpolate(table, size=grid, mode="bicubic", align_corners=False)
        return table.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim)

    def forward(self, z: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        queries = self.positional_queries(grid) + self.z_add(z)[:, None]
        if self.heatmap_add is not None:
            points = points_from_z(z[:, z.shape[1] - 2 * self.keypoints :])
            sigma = (1.0 / self.grid[1], 1.0 / self.grid[0])
            queries = queries + self.heatmap_add(heatmaps(points, grid, sigma))
        x = torch.cat([self.z_token(z)[:, None], queries], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x[:, 1:]).reshape(z.shape[0], grid[0], grid[1], -1)
