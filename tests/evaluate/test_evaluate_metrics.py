"""Image metrics, the PCA baseline and the ridge probe against independent numpy computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.evaluate.baselines import PixelPCA, mean_image
from distill.evaluate.metrics import Summary, cosine_stats, psnr, ssim
from distill.evaluate.probe import ridge_probe


def _numpy_ssim(a: np.ndarray, b: np.ndarray, size: int = 11, sigma: float = 1.5) -> float:
    """SSIM of two [3, H, W] images in [0, 1]: separable Gaussian window over the reflect-padded image."""
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    g /= g.sum()

    def blur(img: np.ndarray) -> np.ndarray:
        img = np.pad(img, size // 2, mode="reflect")
        rows = np.stack([np.convolve(r, g, mode="valid") for r in img])
        return np.stack([np.convolve(c, g, mode="valid") for c in rows.T]).T

    c1, c2 = 0.01**2, 0.03**2
    maps = []
    for ca, cb in zip(a, b, strict=True):
        mu_a, mu_b = blur(ca), blur(cb)
        var_a = blur(ca * ca) - mu_a**2
        var_b = blur(cb * cb) - mu_b**2
        cov = blur(ca * cb) - mu_a * mu_b
        maps.append(
            ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
        )
    return float(np.mean(maps))


def test_psnr_and_ssim_match_numpy() -> None:
    rng = np.random.default_rng(0)
    target = rng.random((3, 3, 32, 32))
    pred = np.clip(target + rng.normal(0, 0.1, target.shape), 0, 1)
    pred[1] = target[1]  # a perfect frame
    t, p = torch.from_numpy(target), torch.from_numpy(pred)
    expected_psnr = [10 * np.log10(1 / max(np.mean((pred[i] - target[i]) ** 2), 1e-10)) for i in range(3)]
    np.testing.assert_allclose(psnr(p, t).numpy(), expected_psnr, rtol=1e-5)
    expected_ssim = [_numpy_ssim(pred[i], target[i]) for i in range(3)]
    np.testing.assert_allclose(ssim(p, t).numpy(), expected_ssim, atol=1e-5)
    assert ssim(p, t)[1] == pytest.approx(1.0, abs=1e-6)


def test_psnr_clamps_predictions_to_the_image_range() -> None:
    target = torch.ones(1, 3, 8, 8)
    assert psnr(torch.full_like(target, 5.0), target)[0] == psnr(target, target)[0]


def test_summary_mean_and_fifth_percentile() -> None:
    values = torch.arange(101, dtype=torch.float32)
    assert Summary.of(values) == Summary(50.0, 5.0)


def test_consecutive_cosine_reads_pairs_within_videos_only() -> None:
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    stats = cosine_stats(z, ["a", "a", "b", "b"])
    assert stats["consecutive_cos"] == pytest.approx(1.0)  # a->a and b->b; the a->b step is not a pair
    assert 0.3 < stats["random_pair_cos"] < 0.7


@pytest.mark.parametrize("frames", [40, 5000])  # exact SVD, and the randomised one past EXACT_LIMIT
def test_pca_matches_numpy_svd(frames: int) -> None:
    rng = np.random.default_rng(1)
    basis = rng.normal(size=(6, 3 * 4 * 4))
    data = rng.normal(size=(frames, 6)) * np.array([5, 4, 3, 2, 1.5, 1]) @ basis
    data = (data - data.min()) / (data.max() - data.min())  # images in [0, 1]
    data += rng.normal(0, 1e-3, data.shape)
    images = torch.from_numpy(data).float().reshape(frames, 3, 4, 4)
    pca = PixelPCA.fit(images, 4)
    centred = data - data.mean(0)
    _, _, vh = np.linalg.svd(centred, full_matrices=False)
    # Same subspace (signs are arbitrary): projections onto it agree.
    np.testing.assert_allclose(
        pca.components.double().numpy().T @ pca.components.double().numpy(), vh[:4].T @ vh[:4], atol=2e-4
    )
    recon = pca.decode(pca.encode(images)).reshape(frames, -1).double().numpy()
    expected = centred @ vh[:4].T @ vh[:4] + data.mean(0)
    np.testing.assert_allclose(recon, expected, atol=2e-4)
    np.testing.assert_allclose(mean_image(images).reshape(-1).numpy(), data.mean(0), atol=1e-5)


def test_pca_refuses_more_components_than_frames() -> None:
    with pytest.raises(ValueError, match="needs at least 8 frames"):
        PixelPCA.fit(torch.rand(4, 3, 4, 4), 8)


def test_ridge_probe_recovers_a_planted_linear_state() -> None:
    rng = np.random.default_rng(2)
    weights = rng.normal(size=(8, 3))
    x_train, x_test = rng.normal(size=(400, 8)), rng.normal(size=(100, 8))
    y_train, y_test = x_train @ weights + 1.5, x_test @ weights + 1.5
    groups = [f"video{i // 20}" for i in range(400)]
    result = ridge_probe(*(torch.from_numpy(a) for a in (x_train, y_train, x_test, y_test)), groups)
    assert min(result.r2) > 0.9999
    assert result.alpha == min(result.alpha, 1e-3)  # cross-validation picks the weakest regularisation


def test_ridge_probe_scores_noise_near_zero() -> None:
    rng = np.random.default_rng(3)
    x_train, x_test = rng.normal(size=(300, 4)), rng.normal(size=(300, 4))
    y_train, y_test = rng.normal(size=(300, 2)), rng.normal(size=(300, 2))
    groups = [str(i // 10) for i in range(300)]
    result = ridge_probe(*(torch.from_numpy(a) for a in (x_train, y_train, x_test, y_test)), groups)
    assert max(result.r2) < 0.05
