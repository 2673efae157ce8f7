"""Each loss term against an independent numpy computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.losses import LossConfig, cosine_distance, distillation_loss, pixel_mse
from distill.models.keypoints import SpriteSearch
from distill.models.student import StudentOutput


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


@pytest.mark.parametrize(
    ("pixel_weight", "search_weight", "assign_weight"),
    [(1.0, 1.0, 0.1), (4.0, 0.5, 0.0), (2.0, 0.0, 0.3), (0.0, 1.0, 1.0)],
)
def test_the_sprite_search_is_weighted_relative_to_the_pixel_term(
    pixel_weight: float, search_weight: float, assign_weight: float
) -> None:
    """The change weighs sprite_search * pixel_mse over pixel_scale (MSE units, like the pixel term), the
    assignment sprite_assign * pixel_mse (nats): switching the pixel term off switches the search off."""
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    pixels = torch.full((2, 3, 4, 4), 0.1)
    search = SpriteSearch(change=torch.tensor(-0.002), assignment=torch.tensor(1.5))
    output = StudentOutput(z=torch.zeros(2, 4), features={}, pixels=pixels, sprite_search=search)
    cfg = LossConfig(
        pixel_mse=pixel_weight, sprite_search=search_weight, sprite_assign=assign_weight, pixel_scale=0.5
    )
    if pixel_weight == 0:
        with pytest.raises(ValueError, match="nothing to train"):
            distillation_loss(output, {}, images, cfg)
        return
    loss = distillation_loss(output, {}, images, cfg)
    sprites = pixel_weight * (search_weight * -0.002 / 0.5 + assign_weight * 1.5)
    assert float(loss.terms["sprites/total"]) == pytest.approx(sprites)
    assert float(loss.terms["sprites/assignment"]) == 1.5
    assert float(loss.total) == pytest.approx(pixel_weight * 0.01 / 0.5 + sprites, rel=1e-5)


def test_the_assignment_fades_linearly_to_zero() -> None:
    """sprite_assign_fade_steps=4: full weight at step 0, half at 2, none from 4 on; the rest unchanged."""
    cfg = LossConfig(sprite_assign=0.2, sprite_assign_fade_steps=4, sprite_search=0.7)
    weights = [cfg.at_step(step).sprite_assign for step in range(6)]
    assert weights == pytest.approx([0.2, 0.15, 0.1, 0.05, 0.0, 0.0])
    assert cfg.at_step(1).sprite_search == 0.7
    assert LossConfig(sprite_assign=0.2).at_step(10_000).sprite_assign == 0.2  # 0: it never fades
    with pytest.raises(ValueError, match="sprite_assign_fade_steps must be >= 0"):
        LossConfig(sprite_assign_fade_steps=-1)
