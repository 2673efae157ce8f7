"""Spatial-softmax keypoints: geometry against numpy, the z round trip, and what the decoder reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from student_fixtures import images, make_student

from distill.models.keypoints import KeypointPooling, cell_centres, heatmaps, points_from_z, points_to_z


def test_cell_centres_are_x_then_y_in_raster_order() -> None:
    centres = cell_centres((2, 4)).numpy()
    ys, xs = np.mgrid[0:2, 0:4]
    np.testing.assert_allclose(centres, np.stack([(xs.ravel() + 0.5) / 4, (ys.ravel() + 0.5) / 2], 1))


@pytest.mark.parametrize("cell", [(0, 0), (1, 4), (2, 1)])
def test_a_point_lands_on_the_one_patch_that_stands_out_plus_its_offset(cell: tuple[int, int]) -> None:
    grid, width = (3, 5), 4
    pooling = KeypointPooling(width, count=1)
    with torch.no_grad():
        pooling.logits.weight.zero_()
        pooling.logits.weight[0, 0] = 40.0  # looks for feature 0
        pooling.logits.bias.zero_()
        pooling.offsets.weight.zero_()
        pooling.offsets.bias.copy_(torch.tensor([0.5, -1.0]))  # every patch: right by tanh(.5), up by tanh(1)
    tokens = torch.zeros(1, grid[0] * grid[1], width)
    tokens[0, cell[0] * grid[1] + cell[1], 0] = 1.0
    point = pooling(tokens, grid)[0, 0].detach().numpy()
    expected_x = (cell[1] + 0.5) / grid[1] + np.tanh(0.5) * 0.5 / grid[1]
    expected_y = (cell[0] + 0.5) / grid[0] - np.tanh(1.0) * 0.5 / grid[0]
    np.testing.assert_allclose(point, [expected_x, expected_y], atol=1e-4)


def test_points_round_trip_through_z_with_unit_variance_for_uniform_positions() -> None:
    points = torch.rand(20000, 3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = points_to_z(points)
    assert z.shape == (20000, 6)
    torch.testing.assert_close(points_from_z(z), points)
    np.testing.assert_allclose(z.var(0).numpy(), 1.0, atol=0.03)
    np.testing.assert_allclose(z.mean(0).numpy(), 0.0, atol=0.03)


def test_heatmaps_against_numpy() -> None:
    points = torch.tensor([[[0.3, 0.7], [0.9, 0.1]]], dtype=torch.float64)
    grid, sigma = (4, 6), (0.2, 0.1)
    got = heatmaps(points, grid, sigma)[0].numpy()
    ys, xs = np.mgrid[0:4, 0:6]
    cx, cy = ((xs + 0.5) / 6).ravel(), ((ys + 0.5) / 4).ravel()
    for k, (px, py) in enumerate(points[0].numpy()):
        want = np.exp(-0.5 * (((cx - px) / sigma[0]) ** 2 + ((cy - py) / sigma[1]) ** 2))
        np.testing.assert_allclose(got[:, k], want, rtol=1e-5, atol=1e-7)


def test_student_z_ends_with_its_keypoints_and_the_decoder_reads_them() -> None:
    student = make_student(z_keypoints=3)
    with torch.no_grad():
        z = student.encode(images(4))
        assert z.shape == (4, 16)
        points = points_from_z(z[:, -6:])
        assert ((points >= 0) & (points <= 1)).all()
        moved = z.clone()
        moved[:, -6:] = points_to_z(torch.full_like(points, 0.5))
        before, after = student.predict(z).pixels, student.predict(moved).pixels
    assert before is not None and after is not None
    assert (before - after).abs().amax() > 1e-3  # the positions alone change what is drawn


def test_keypoints_must_leave_room_for_the_summary() -> None:
    with pytest.raises(ValueError, match="z_keypoints=8 takes 16 of z's d_z=16"):
        make_student(z_keypoints=8)


@pytest.mark.parametrize("quantizer", ["fsq", "vq"])
def test_keypoints_and_a_quantiser_are_refused_together(quantizer: str) -> None:
    with pytest.raises(ValueError, match=f"z_keypoints=2 with quantizer={quantizer}"):
        make_student(z_keypoints=2, quantizer=quantizer)
