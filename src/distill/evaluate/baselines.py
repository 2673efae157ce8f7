"""Baselines of the same width as z, fitted on the train split: the mean image and PCA of the pixels."""

from __future__ import annotations

from dataclasses import dataclass

import torch

EXACT_LIMIT = 4096  # up to this many frames (or pixels) an exact SVD is cheap; beyond, a randomised one


@dataclass(frozen=True)
class PixelPCA:
    """PCA of flattened [3, H, W] images in [0, 1]: ``components`` [k, D] orthonormal rows, ``mean`` [D]."""

    mean: torch.Tensor
    components: torch.Tensor
    shape: tuple[int, int, int]

    @classmethod
    def fit(cls, images: torch.Tensor, k: int, seed: int = 0) -> PixelPCA:
        """Top-``k`` principal directions of ``images`` [N, 3, H, W] (uint8 or float in [0, 1])."""
        x = _flat(images)
        if not 1 <= k <= min(x.shape):
            raise ValueError(
                f"PCA with {k} components needs at least {k} frames and pixels, got {tuple(x.shape)}"
            )
        mean = x.mean(0)
        centred = x - mean
        if min(centred.shape) <= EXACT_LIMIT:
            _, _, vh = torch.linalg.svd(centred, full_matrices=False)
            components = vh[:k]
        else:
            torch.manual_seed(seed)
            _, _, v = torch.svd_lowrank(centred, q=min(k + 32, min(centred.shape)), niter=8)
            components = v[:, :k].T
        return cls(mean, components.contiguous(), tuple(images.shape[1:]))  # type: ignore[arg-type]

    @property
    def k(self) -> int:
        return int(self.components.shape[0])

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> coefficients [N, k]."""
        return (_flat(images) - self.mean) @ self.components.T

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Coefficients [N, k] -> images [N, 3, H, W] in [0, 1] space (unclamped)."""
        return (codes @ self.components + self.mean).reshape(-1, *self.shape)


def mean_image(images: torch.Tensor) -> torch.Tensor:
    """The per-pixel mean [3, H, W] of ``images``: the best constant prediction under MSE."""
    return _flat(images).mean(0).reshape(images.shape[1:])


def _flat(images: torch.Tensor) -> torch.Tensor:
    x = images.flatten(1)
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
