"""Each loss term against an independent numpy computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.losses import cosine_distance, pixel_mse


def test_cosine_distance_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(2, 3, 4, 5)), rng.normal(size=(2, 3, 4, 5))
    cos = (pred * target).sum(-1) / (np.linalg.norm(pred, axis=-1) * np.linalg.norm(target, axis=-1))
    got = cosine_distance(torch.from_numpy(pred), torch.from_numpy(target))
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.item(), (1 - cos).mean(), rtol=1e-5)


def test_cosine_distance_reference_values() -> None:
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 2.0]])
    b = torch.tensor([[3.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    # identical direction (0), orthogonal (1), opposite (2) -> mean 1.
    assert cosine_distance(a, b).item() == pytest.approx(1.0)


def test_cosine_distance_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3\) and target \(2, 4\)"):
        cosine_distance(torch.zeros(2, 3), torch.zeros(2, 4))


def test_pixel_mse_compares_against_unit_float_images() -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(2, 3, 8, 8), dtype=np.uint8)
    pixels = rng.normal(0.5, 0.3, size=(2, 3, 8, 8)).astype(np.float32)
    want = ((pixels.astype(np.float64) - images / 255.0) ** 2).mean()
    np.testing.assert_allclose(
        pixel_mse(torch.from_numpy(pixels), torch.from_numpy(images)).item(), want, rtol=1e-5
    )
    as_float = torch.from_numpy(images).float() / 255.0
    np.testing.assert_allclose(pixel_mse(torch.from_numpy(pixels), as_float).item(), want, rtol=1e-5)
    with pytest.raises(ValueError, match="predicted pixels"):
        pixel_mse(torch.from_numpy(pixels), torch.from_numpy(images)[:, :, :4])
