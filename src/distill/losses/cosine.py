"""Cosine distance between feature vectors: direction matching, blind to scale."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_distance(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean of ``1 - cos(pred, target)`` over every vector (channels last: [..., C]), in float32."""
    if pred.shape != target.shape:
        raise ValueError(
            f"cosine_distance: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ"
        )
    return (1.0 - F.cosine_similarity(pred.float(), target.float(), dim=-1, eps=eps)).mean()
