"""PCA maps: agreement with a numpy SVD reference, one basis per video, deterministic colours."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.decode.pca import QUANTILE, fit_pca


def _features(seed: int, frames: int = 5, grid: int = 6, channels: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(3.0, 0.1, channels)  # distinct variances, so the top directions are unique
    return torch.randn(frames, grid, grid, channels, generator=g) * scales + torch.randn(
        channels, generator=g
    )


def test_projection_matches_numpy_svd() -> None:
    feats = _features(0)
    basis = fit_pca(feats)
    x = feats.reshape(-1, feats.shape[-1]).double().numpy()
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    reference = centred @ vt[:3].T
    ours = basis.project(feats).reshape(-1, 3).numpy()
    signs = np.sign((ours * reference).sum(0))  # SVD's sign is arbitrary; ours is fixed by convention
    np.testing.assert_allclose(ours, reference * signs, rtol=1e-9, atol=1e-9)
    lo, hi = np.quantile(reference * signs, [QUANTILE, 1 - QUANTILE], axis=0)
    np.testing.assert_allclose(basis.low.numpy(), lo, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(basis.high.numpy(), hi, rtol=1e-9, atol=1e-9)
    components = basis.components.numpy()
    np.testing.assert_allclose(components @ components.T, np.eye(3), atol=1e-10)


def test_rgb_in_unit_range_and_clipped_at_quantiles() -> None:
    feats = _features(1)
    rgb = fit_pca(feats).to_rgb(feats)
    assert rgb.shape == (5, 6, 6, 3) and rgb.dtype == torch.float32
    assert float(rgb.min()) == 0.0 and float(rgb.max()) == 1.0
    clipped = ((rgb == 0) | (rgb == 1)).float().mean(0).mean().item()  # per-channel fraction at the ends
    assert clipped == pytest.approx(2 * QUANTILE, abs=0.02)


def test_one_basis_over_a_video_gives_identical_colours_for_identical_frames() -> None:
    frames = _features(2, frames=6)
    frames[4] = frames[1]  # the scene returns to an earlier frame
    rgb = fit_pca(frames).to_rgb(frames)
    assert torch.equal(rgb[4], rgb[1])
    assert not torch.equal(rgb[2], rgb[1])


def test_basis_is_sign_deterministic_and_reusable_on_other_features() -> None:
    student, teacher = _features(3), _features(4)
    a, b = fit_pca(student), fit_pca(student.clone())
    assert torch.equal(a.components, b.components)
    pivots = a.components.abs().argmax(1)
    assert bool((a.components.gather(1, pivots[:, None]) > 0).all())
    assert torch.equal(a.to_rgb(teacher), b.to_rgb(teacher))  # one basis serves both rows
    with pytest.raises(ValueError, match="fitted on 24 channels"):
        a.to_rgb(teacher[..., :8])


def test_degenerate_features() -> None:
    constant = torch.ones(2, 3, 3, 5)
    rgb = fit_pca(constant).to_rgb(constant)
    assert torch.isfinite(rgb).all() and torch.equal(rgb, torch.zeros_like(rgb))
    two_channels = _features(5, channels=2)
    basis = fit_pca(two_channels)
    assert torch.equal(basis.components[2], torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="NaN"):
        fit_pca(torch.full((1, 2, 2, 4), float("nan")))
