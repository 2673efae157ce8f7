"""PCA maps: patch features -> RGB through a 3-component basis fitted once and then frozen.

The basis (mean, three principal directions and a colour range per direction) is fitted over
every token of every frame given, so a video gets one basis and its colours do not flicker; the
same basis is then applied to other features (the teacher's, in compare mode) so the rows of a
grid are coloured by the same map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

COMPONENTS = 3
QUANTILE = 0.01  # colour range per component: its 1st..99th percentile over the fitted tokens
_MAX_QUANTILE_ROWS = 1 << 22  # torch.quantile's input limit is 2**24; stride-subsample above this


@dataclass(frozen=True)
class PcaBasis:
    """A frozen projection: ``rgb = clip((x - mean) @ components.T - low) / (high - low), 0, 1)``."""

    mean: torch.Tensor  # [C] float64
    components: torch.Tensor  # [3, C] float64, orthonormal rows, sign fixed (see fit_pca)
    low: torch.Tensor  # [3] float64
    high: torch.Tensor  # [3] float64

    @property
    def channels(self) -> int:
        return int(self.mean.shape[0])

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Features [..., C] -> principal coordinates [..., 3] (float64, before colour scaling)."""
        if features.shape[-1] != self.channels:
            raise ValueError(
                f"PCA basis was fitted on {self.channels} channels but features have {features.shape[-1]}; "
                "apply a basis only to features of the teacher it was fitted on"
            )
        x = features.detach().to("cpu", torch.float64)
        return (x - self.mean) @ self.components.T

    def to_rgb(self, features: torch.Tensor) -> torch.Tensor:
        """Features [..., C] -> colours [..., 3] in [0, 1] (float32)."""
        coords = self.project(features)
        return ((coords - self.low) / (self.high - self.low)).clamp_(0.0, 1.0).float()


def _flatten(features: torch.Tensor) -> torch.Tensor:
    if features.ndim < 2 or features.numel() == 0:
        raise ValueError(
            f"PCA needs features [..., C] with at least one token, got shape {tuple(features.shape)}"
        )
    if not torch.isfinite(features).all():
        raise ValueError("PCA features contain NaN or inf; check the checkpoint's stats and the model output")
    return features.detach().to("cpu", torch.float64).reshape(-1, features.shape[-1])


def fit_pca(features: torch.Tensor) -> PcaBasis:
    """Fit on every token of ``features`` [..., C] (e.g. [T, h, w, C]: all frames of a video at once).

    Directions are the top eigenvectors of the token covariance (= right singular vectors of the
    centred token matrix). Each direction's sign is fixed so its largest-magnitude loading is
    positive, which makes the colours deterministic. With fewer than three channels the missing
    directions are zero (a constant colour channel).
    """
    x = _flatten(features)
    mean = x.mean(0)
    centred = x - mean
    cov = centred.T @ centred / max(x.shape[0] - 1, 1)
    _, vectors = torch.linalg.eigh(cov)  # ascending eigenvalues
    top = vectors.flip(-1)[:, :COMPONENTS].T.contiguous()  # [k, C], k = min(3, C)
    pivot = top.abs().argmax(dim=1, keepdim=True)
    top = top * torch.sign(top.gather(1, pivot))
    components = torch.zeros(COMPONENTS, x.shape[1], dtype=torch.float64)
    components[: top.shape[0]] = top
    coords = centred @ components.T
    if coords.shape[0] > _MAX_QUANTILE_ROWS:
        coords = coords[:: -(-coords.shape[0] // _MAX_QUANTILE_ROWS)]
    low = torch.quantile(coords, QUANTILE, dim=0)
    high = torch.quantile(coords, 1.0 - QUANTILE, dim=0)
    flat = (high - low) <= 1e-12
    high = torch.where(flat, low + 1.0, high)  # a constant direction maps to one colour, not NaN
    return PcaBasis(mean=mean, components=components, low=low, high=high)
