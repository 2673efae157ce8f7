"""The mean image and pixel-loss scale the trainer starts from, against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.distributed import DistContext
from distill.train.calibrate import MIN_PIXEL_SCALE, image_moments, pixel_scale


def test_image_moments_match_numpy_over_all_batches() -> None:
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (n, 3, 4, 4), dtype=np.uint8) for n in (3, 5)]
    moments = image_moments((torch.from_numpy(b) for b in batches), DistContext())
    everything = np.concatenate(batches).astype(np.float64) / 255
    mean = everything.mean(0)
    np.testing.assert_allclose(moments.mean_image.numpy(), mean, atol=1e-6)
    assert moments.mean_image_mse == pytest.approx(np.mean((everything - mean) ** 2), rel=1e-6)
    assert pixel_scale(moments) == pytest.approx(moments.mean_image_mse)


def test_frames_that_never_change_get_the_floor_scale() -> None:
    still = torch.full((4, 3, 2, 2), 7, dtype=torch.uint8)
    moments = image_moments([still, still], DistContext())
    assert moments.mean_image_mse == 0.0 and pixel_scale(moments) == MIN_PIXEL_SCALE
    with pytest.raises(ValueError, match="train split is empty"):
        image_moments([], DistContext())
