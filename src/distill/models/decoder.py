"""The CLS bottleneck: CLS -> z, and a token decoder that rebuilds a spatial grid from z alone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ZProjection(nn.Module):
    """Backbone CLS output [B, D] -> z [B, d_z] (LayerNorm + Linear)."""

    def __init__(self, width: int, d_z: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.linear = nn.Linear(width, d_z)

    def forward(self, cls_token: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(cls_token))


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

    One learned query per position of the student's patch grid (resampled bicubically for another
    input resolution, like ViT position embeddings). z enters twice: added to every query and
    prepended as an extra token the blocks attend to; that token is dropped at the end.
    """

    def __init__(self, d_z: int, dim: int, depth: int, heads: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = grid
        self.queries = nn.Parameter(torch.empty(1, grid[0] * grid[1], dim))
        nn.init.trunc_normal_(self.queries, std=0.02)
        self.z_add = nn.Linear(d_z, dim)
        self.z_token = nn.Linear(d_z, dim)
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
        x = torch.cat([self.z_token(z)[:, None], queries], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x[:, 1:]).reshape(z.shape[0], grid[0], grid[1], -1)
