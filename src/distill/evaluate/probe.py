"""Ridge probes: how linearly a representation reads a frame's ground-truth state, on held-out videos.

The regularisation strength is picked by cross-validation over whole train videos (frames of one
video never sit on both sides of a fold), then the probe is refitted on all train frames and scored
with R^2 per state dimension on the held-out frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


@dataclass(frozen=True)
class ProbeResult:
    r2: list[float]  # per target dimension, on the held-out frames
    alpha: float  # the ridge strength cross-validation chose


def ridge_fit(x: torch.Tensor, y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights [F, K] and bias [K] of ridge regression (features standardised inside, bias unpenalised)."""
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-12)
    xs = (x - mu) / sd
    y_mu = y.mean(0)
    gram = xs.T @ xs + alpha * torch.eye(xs.shape[1], dtype=xs.dtype)
    w = torch.linalg.solve(gram, xs.T @ (y - y_mu)) / sd[:, None]
    return w, y_mu - mu @ w


def r2_score(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Coefficient of determination per column (1 - SSE / SST; a constant column scores 0 if matched)."""
    sse = (pred - target).square().sum(0)
    sst = (target - target.mean(0)).square().sum(0)
    return torch.where(sst > 0, 1 - sse / sst.clamp_min(1e-300), (sse == 0).to(sse.dtype))


def ridge_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    groups: Sequence[str],
    folds: int = 5,
    alphas: Sequence[float] = ALPHAS,
) -> ProbeResult:
    """R^2 per dimension of ``test_y`` from ``test_x`` with a ridge fitted on the train side."""
    if len(groups) != train_x.shape[0]:
        raise ValueError(f"{len(groups)} group labels for {train_x.shape[0]} train rows")
    x, y = train_x.double(), train_y.double()
    unique = sorted(set(groups))
    fold_of = {g: i % min(folds, len(unique)) for i, g in enumerate(unique)}
    fold = torch.tensor([fold_of[g] for g in groups])
    n_folds = int(fold.max()) + 1
    best_alpha, best_error = alphas[0], float("inf")
    for alpha in alphas:
        error = 0.0
        for f in range(n_folds) if n_folds > 1 else []:
            train, held = fold != f, fold == f
            w, b = ridge_fit(x[train], y[train], alpha)
            error += float((x[held] @ w + b - y[held]).square().sum())
        if error < best_error:
            best_alpha, best_error = alpha, error
    w, b = ridge_fit(x, y, best_alpha)
    r2 = r2_score(test_x.double() @ w + b, test_y.double())
    return ProbeResult([float(v) for v in r2], best_alpha)
