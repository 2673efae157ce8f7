"""Per-frame image metrics (PSNR, SSIM via torchmetrics) and the summaries the report shows."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchmetrics.functional.image import structural_similarity_index_measure


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-frame PSNR in dB of [N, 3, H, W] images in [0, 1] (predictions clamped to that range)."""
    mse = (pred.float().clamp(0, 1) - target.float()).square().flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-frame SSIM (Gaussian window 11, sigma 1.5) of [N, 3, H, W] images in [0, 1]."""
    value = structural_similarity_index_measure(
        pred.float().clamp(0, 1), target.float(), data_range=1.0, reduction="none"
    )
    assert isinstance(value, torch.Tensor)
    return value


@dataclass(frozen=True)
class Summary:
    """Mean and 5th percentile over frames: the typical frame and the bad ones."""

    mean: float
    p5: float

    @classmethod
    def of(cls, values: torch.Tensor) -> Summary:
        values = values.double()
        return cls(float(values.mean()), float(torch.quantile(values, 0.05)))


def cosine_stats(z: torch.Tensor, video_ids: list[str], seed: int = 0) -> dict[str, float]:
    """Mean cosine of consecutive z's within each video, against random pairs of the same set.

    A z that tracks the frame changes smoothly: consecutive frames sit closer than random ones.
    """
    if z.shape[0] < 2:
        return {}
    unit = torch.nn.functional.normalize(z.double(), dim=1)
    same = [i for i in range(len(video_ids) - 1) if video_ids[i] == video_ids[i + 1]]
    generator = torch.Generator().manual_seed(seed)
    first = torch.randint(0, z.shape[0], (max(len(same), 1000),), generator=generator)
    second = torch.randint(0, z.shape[0], first.shape, generator=generator)
    keep = first != second
    random_pairs = (unit[first[keep]] * unit[second[keep]]).sum(1).mean()
    out = {"random_pair_cos": float(random_pairs)}
    if same:
        index = torch.tensor(same)
        out["consecutive_cos"] = float((unit[index] * unit[index + 1]).sum(1).mean())
    return out


def norm_stats(z: torch.Tensor) -> dict[str, float]:
    norms = z.double().norm(dim=1)
    return {
        "mean": float(norms.mean()),
        "std": float(norms.std()) if len(norms) > 1 else 0.0,
        "min": float(norms.min()),
        "max": float(norms.max()),
    }
