"""Spatial heads (resampling to any teacher grid, mlp vs conv), summary head, pixel head layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill.models import PixelHead, SpatialHead, patchify, resample_grid


def _triangle_weights(n_in: int, n_out: int) -> np.ndarray:
    """Bilinear resampling matrix [n_out, n_in], half-pixel centres, triangle filter widened by the
    scale when shrinking (PIL-style antialiasing), normalised per output and clamped at the edges."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    out = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale - 0.5
        if scale <= 1.0:  # upsampling: interpolate the two neighbours, clamping the coordinate at the borders
            x = min(max(centre, 0.0), n_in - 1.0)
            lo = int(np.floor(x))
            hi = min(lo + 1, n_in - 1)
            out[i, lo] += 1.0 - (x - lo)
            out[i, hi] += x - lo
        else:
            for j in range(n_in):
                out[i, j] = max(0.0, 1.0 - abs(j - centre) / support)
            out[i] /= out[i].sum()
    return out


@pytest.mark.parametrize(
    ("src", "dst"),
    [((4, 4), (16, 16)), ((14, 14), (64, 64)), ((8, 8), (4, 4)), ((28, 28), (14, 14)), ((6, 4), (3, 10))],
)
def test_resampling_matches_an_independent_bilinear_reference(
    src: tuple[int, int], dst: tuple[int, int]
) -> None:
    grid = torch.randn(2, *src, 5, dtype=torch.float64)  # channels last
    got = resample_grid(grid, dst).numpy()
    rows, cols = _triangle_weights(src[0], dst[0]), _triangle_weights(src[1], dst[1])
    want = np.einsum("ij,bjkc,lk->bilc", rows, grid.numpy(), cols)
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize(
    ("src", "dst"), [((14, 14), (64, 64)), ((14, 14), (16, 16)), ((16, 16), (14, 14)), ((6, 4), (3, 10))]
)
def test_resampling_by_matrices_is_interpolate_forward_and_backward(
    src: tuple[int, int], dst: tuple[int, int]
) -> None:
    """The two matrix products give F.interpolate's values and gradients (its CUDA backward, which
    the products replace, scatters with atomic adds)."""
    torch.manual_seed(0)
    grid = torch.randn(2, *src, 5, dtype=torch.float64, requires_grad=True)
    channels_first = grid.detach().permute(0, 3, 1, 2).requires_grad_()
    shrinks = dst[0] < src[0] or dst[1] < src[1]
    want = F.interpolate(channels_first, size=dst, mode="bilinear", align_corners=False, antialias=shrinks)
    got = resample_grid(grid, dst)
    torch.testing.assert_close(got, want.permute(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(got)
    (got * upstream).sum().backward()
    (want * upstream.permute(0, 3, 1, 2)).sum().backward()
    assert grid.grad is not None and channels_first.grad is not None
    torch.testing.assert_close(grid.grad, channels_first.grad.permute(0, 2, 3, 1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("teacher_grid", [(16, 16), (4, 4), (2, 2), (3, 5), (64, 64)])
def test_spatial_head_maps_any_grid_to_the_teacher_grid(kind: str, teacher_grid: tuple[int, int]) -> None:
    head = SpatialHead(in_dim=12, out_dim=7, grid=teacher_grid, kind=kind, hidden_dim=10)  # type: ignore[arg-type]
    out = head(torch.randn(3, 4, 4, 12))
    assert out.shape == (3, *teacher_grid, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("kind", "reach"), [("mlp", 0), ("conv", 1)])
def test_mlp_mixes_one_position_and_conv_its_neighbourhood(kind: str, reach: int) -> None:
    torch.manual_seed(0)
    head = SpatialHead(in_dim=8, out_dim=5, grid=(6, 6), kind=kind, hidden_dim=8).eval()  # type: ignore[arg-type]
    tokens = torch.randn(1, 6, 6, 8)
    poked = tokens.clone()
    poked[0, 2, 3] += torch.randn(8)
    changed = (head(poked) - head(tokens)).abs().amax(-1)[0] > 1e-6
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[2 - reach : 3 + reach, 3 - reach : 4 + reach] = True
    assert torch.equal(changed, expected)


def test_pixel_head_unpatchifies_in_mae_order() -> None:
    torch.manual_seed(0)
    p, h, w = 4, 3, 5
    head = PixelHead(in_dim=6, patch_size=p, image_size=16)
    head.set_canvas(torch.zeros(3, 16, 16))  # the residual alone, resampled zeros add nothing
    tokens = torch.randn(2, h, w, 6)
    image = head(tokens)
    assert image.shape == (2, 3, h * p, w * p)
    per_token = head.linear(head.norm(tokens)).detach().numpy()  # [B, h, w, p*p*3]
    want = np.zeros((2, 3, h * p, w * p), dtype=np.float32)
    for r in range(h):
        for c in range(w):
            for i in range(p):
                for j in range(p):
                    want[:, :, r * p + i, c * p + j] = per_token[
                        :, r, c, (i * p + j) * 3 : (i * p + j) * 3 + 3
                    ]
    np.testing.assert_allclose(image.detach().numpy(), want, atol=1e-6)
    assert torch.equal(patchify(image, p), head.linear(head.norm(tokens)))


def test_pixel_head_adds_its_canvas_resampled_to_the_output_size() -> None:
    torch.manual_seed(0)
    head = PixelHead(in_dim=6, patch_size=4, image_size=8)
    mean_image = torch.rand(3, 8, 8)
    head.set_canvas(mean_image)
    tokens = torch.randn(1, 2, 2, 6)
    residual = head(tokens) - mean_image  # at the training size the canvas is added as it is
    head.set_canvas(torch.zeros(3, 8, 8))
    torch.testing.assert_close(head(tokens), residual)
    head.set_canvas(torch.full((3, 4, 4), 0.25))  # a canvas of another size is resampled on the way in
    torch.testing.assert_close(head.canvas, torch.full((1, 3, 8, 8), 0.25))
    torch.nn.init.zeros_(head.linear.weight)
    torch.nn.init.zeros_(head.linear.bias)  # no residual: a 4x4 grid (16 px) shows the canvas resampled
    torch.testing.assert_close(head(tokens.repeat(1, 2, 2, 1)), torch.full((1, 3, 16, 16), 0.25))
    with pytest.raises(ValueError, match="canvas image must be"):
        head.set_canvas(torch.zeros(8, 8))


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize(
    ("student_grid", "teacher_grid"),
    [((14, 14), (64, 64)), ((14, 14), (16, 16)), ((16, 16), (14, 14)), ((4, 6), (9, 3))],
)
def test_spatial_head_equals_resampling_before_mapping(
    kind: str, student_grid: tuple[int, int], teacher_grid: tuple[int, int]
) -> None:
    """mlp heads map channels on the smaller grid; the result is resample-then-map's (the old order)."""
    torch.manual_seed(0)
    head = SpatialHead(in_dim=12, out_dim=7, grid=teacher_grid, kind=kind, hidden_dim=10).double()  # type: ignore[arg-type]
    tokens = torch.randn(2, *student_grid, 12, dtype=torch.float64)
    resampled = resample_grid(head.norm(tokens), teacher_grid).permute(0, 3, 1, 2)
    want = head.out(head.act(head.mix(resampled))).permute(0, 2, 3, 1)
    torch.testing.assert_close(head(tokens), want, rtol=1e-12, atol=1e-12)
