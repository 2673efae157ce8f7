"""Spatial-softmax keypoints: geometry against numpy, the z round trip, and what the decoder reads."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from student_fixtures import images, make_student

from distill.models.keypoints import (
    KeypointPooling,
    KeypointSprites,
    cell_centres,
    heatmaps,
    points_from_z,
    points_to_z,
)


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


@pytest.mark.parametrize(
    ("fits", "misfits", "width"),
    [
        (
            {"quantizer": "fsq", "fsq_levels": (5,) * 4},
            {"quantizer": "fsq", "fsq_levels": (5,) * 5},
            "len\\(fsq_levels\\)=5",
        ),
        ({"quantizer": "vq", "vq_code_dim": 4}, {"quantizer": "vq", "vq_code_dim": 8}, "vq_code_dim=8"),
    ],
)
def test_a_quantiser_cuts_the_summary_before_the_keypoints(
    fits: dict[str, Any], misfits: dict[str, Any], width: str
) -> None:
    # d_z 16 less 2 x 2 keypoint coordinates leaves a 12-dimensional summary: 4-wide codes fit, 5 or 8 do not
    student = make_student(z_keypoints=2, **fits)
    assert student.quantizer is not None and student.quantizer.groups == 3
    with pytest.raises(ValueError, match=f"12 dimensions\\) is not a multiple of {width}"):
        make_student(z_keypoints=2, **misfits)
    with pytest.raises(ValueError, match="keypoint_levels must be >= 2"):
        make_student(z_keypoints=2, keypoint_levels=1, **fits)


def _sprites(count: int, seed: int = 0) -> KeypointSprites:
    sprites = KeypointSprites(count)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sprites.colour.copy_(torch.rand(count, 3, generator=gen, dtype=torch.float64).float())
        sprites.opacity_logit.copy_(torch.randn(count, generator=gen))
        sprites.log_radius.copy_(torch.log(torch.tensor([0.05, 0.09][:count])))
    return sprites.double()


def test_a_sprite_is_a_gaussian_disc_of_its_colour_at_its_point_against_numpy() -> None:
    sprites = _sprites(1)
    pixels = torch.rand(1, 3, 12, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    point = (0.3, 0.6)
    got = sprites(pixels, torch.tensor([[point]], dtype=torch.float64))[0].detach().numpy()
    ys, xs = np.mgrid[0:12, 0:16]
    radius = float(sprites.log_radius.detach().exp()[0])
    footprint = np.exp(
        -0.5 * ((((xs + 0.5) / 16 - point[0]) / radius) ** 2 + (((ys + 0.5) / 12 - point[1]) / radius) ** 2)
    )
    alpha = float(torch.sigmoid(sprites.opacity_logit[0].detach())) * footprint
    colour = sprites.colour[0].detach().numpy()[:, None, None]
    np.testing.assert_allclose(got, pixels[0].numpy() * (1 - alpha) + colour * alpha, rtol=1e-10)


def test_the_search_map_is_the_error_change_of_drawing_an_opaque_sprite_there() -> None:
    """Checked by drawing the sprite (opacity 1) at pixel centres and measuring the squared error."""
    sprites = _sprites(2)
    gen = torch.Generator().manual_seed(2)
    pixels, target = (torch.rand(2, 3, 10, 10, dtype=torch.float64, generator=gen) for _ in range(2))
    with torch.no_grad():
        sprites.opacity_logit.fill_(50.0)  # sigmoid -> 1: the search's opaque sprite
        for k in range(2):
            change = sprites._error_change_map(pixels, target, k, half=10)  # the whole image
            for row, col in [(0, 0), (4, 7), (9, 2)]:
                point = torch.tensor([[(col + 0.5) / 10, (row + 0.5) / 10]], dtype=torch.float64).expand(2, 2)
                drawn = sprites._draw(pixels, point, k)
                brute = (drawn - target).square().sum((1, 2, 3)) - (pixels - target).square().sum((1, 2, 3))
                torch.testing.assert_close(change[:, 0, row, col], brute, rtol=1e-9, atol=1e-12)


def test_the_search_scores_its_one_candidate_twice_once_fitted() -> None:
    """With a single candidate at a pixel centre, both parts of the search are the brute-force change of
    drawing the opaque sprite there, and only the fitted part reaches the sprite's colour and size."""
    sprites = _sprites(1)
    gen = torch.Generator().manual_seed(3)
    pixels, target = (torch.rand(2, 3, 10, 10, dtype=torch.float64, generator=gen) for _ in range(2))
    candidate = torch.tensor([[[[0.45, 0.75]]], [[[0.15, 0.25]]]], dtype=torch.float64)  # [2, 1, 1, 2]
    search = sprites.search(pixels, target, torch.zeros(2, 1, 1, dtype=torch.float64), candidate)
    drawn = sprites._draw(pixels, candidate[:, 0, 0], 0, opaque=True)
    brute = ((drawn - target).square() - (pixels - target).square()).sum((1, 2, 3)).mean() / (3 * 10 * 10)
    torch.testing.assert_close(
        search.change, 2 * brute, rtol=1e-3, atol=0.0
    )  # the map's blur stops at 4 sigma
    assert float(search.assignment.detach()) == 0.0  # one candidate: all the softmax weight is there
    (search_colour,) = torch.autograd.grad(search.change, sprites.colour)
    (brute_colour,) = torch.autograd.grad(brute, sprites.colour)
    torch.testing.assert_close(search_colour, brute_colour)
    assert float(search_colour.abs().sum()) > 0


def _dot_scene() -> tuple[KeypointSprites, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A dark dot on a white image the decoder drew as background only, a dark sprite, and three candidates:
    on the dot (index 0), far from it, and between."""
    sprites = _sprites(2)
    with torch.no_grad():
        sprites.colour.fill_(0.0)
        sprites.log_radius.fill_(float(np.log(0.04)))
    target = torch.ones(1, 3, 16, 16, dtype=torch.float64)
    target[..., 11:13, 3:5] = 0.0  # the dot, centred at (4/16, 12/16)
    candidates = torch.tensor([[[0.25, 0.75]], [[0.75, 0.25]], [[0.5, 0.5]]], dtype=torch.float64)
    return sprites, torch.ones_like(target), target, candidates[None].expand(1, 3, 2, 2)


@pytest.mark.parametrize("part", ["change", "assignment"])
def test_the_search_pulls_the_softmax_towards_where_a_sprite_helps(part: str) -> None:
    """Uniform weights: both parts raise the dot's candidate most under gradient descent."""
    sprites, pixels, target, candidates = _dot_scene()
    logits = torch.zeros(1, 3, 2, dtype=torch.float64, requires_grad=True)
    search = sprites.search(pixels, target, logits.log_softmax(1), candidates)
    assert float(search.change.detach()) < 0
    getattr(search, part).backward()
    assert logits.grad is not None
    assert int(logits.grad[0, :, 0].argmin()) == 0


def test_the_assignment_finds_the_dot_from_a_softmax_settled_elsewhere() -> None:
    """A keypoint whose softmax sits on the far candidate: the averaged change no longer reaches the dot's
    weight (a sprite that settled on a large object never finds a small one); the cross-entropy does."""
    sprites, pixels, target, candidates = _dot_scene()
    logits = (
        torch.tensor([0.0, 40.0, 0.0], dtype=torch.float64)[None, :, None].repeat(1, 1, 2).requires_grad_()
    )
    search = sprites.search(pixels, target, logits.log_softmax(1), candidates)
    (from_change,) = torch.autograd.grad(search.change, logits, retain_graph=True)
    (from_assignment,) = torch.autograd.grad(search.assignment, logits)
    assert abs(float(from_change[0, 0, 0])) < 1e-12
    assert float(from_assignment[0, 0, 0]) == pytest.approx(-0.5)  # (softmax - one-hot) / 2 sprites
    assert float(search.assignment.detach()) == pytest.approx(40.0, rel=1e-6)


def test_each_sprite_is_scored_over_the_sprites_before_it() -> None:
    """A dark dot and a grey one: sprite 0 looks at the dark dot and, opaque as the search draws it, covers
    it, so sprite 1's best candidate is the grey dot, not the one that helps most on the bare decode."""
    sprites, pixels, target, candidates = _dot_scene()
    target[..., 3:5, 11:13] = 0.5  # the grey dot, under candidate 1
    with torch.no_grad():
        sprites.opacity_logit.fill_(0.0)  # half opaque: drawn at that opacity, the dark dot would stay best
    logits = torch.tensor([[40.0, 0.0], [0.0, 0.0], [0.0, 0.0]], dtype=torch.float64)[None].requires_grad_()
    search = sprites.search(pixels, target, logits.log_softmax(1), candidates)
    (grad,) = torch.autograd.grad(search.assignment, logits)
    assert int(grad[0, :, 0].argmin()) == 0  # sprite 0: the dark dot
    assert int(grad[0, :, 1].argmin()) == 1  # sprite 1: the grey dot; the dark one is drawn already


def test_sprites_keep_every_output_a_function_of_z_and_the_search_only_trains() -> None:
    student = make_student(z_keypoints=2, keypoint_sprites=True)
    batch = images(3)
    with torch.no_grad():
        z = student.encode(batch)
        from_z = student.predict(z).pixels
        out = student(batch)
    assert out.sprite_search is None  # eval mode: no search
    assert from_z is not None and out.pixels is not None
    torch.testing.assert_close(from_z, out.pixels)
    moved = z.clone()
    moved[:, -4:] = points_to_z(torch.full((3, 2, 2), 0.5))
    with torch.no_grad():
        other = student.predict(moved).pixels
    assert other is not None
    assert (other - from_z).abs().amax() > 1e-3
    student.train()
    out = student(batch)
    assert out.sprite_search is not None and out.pixels is not None
    # The search reads the pixel head's output before any sprite is drawn, and the encoder's candidates.
    z, found = student.to_z.project(student.backbone_tokens(batch), student.grid_of(batch))
    assert found is not None and student.sprites is not None and student.pixel_head is not None
    assert student.decoder is not None
    undrawn = student.pixel_head(student.decoder(z, student.grid_of(batch)))
    assert (undrawn - out.pixels).abs().amax() > 1e-4  # the sprites do draw something
    expected = student.sprites.search(undrawn.detach(), batch.float() / 255, *found)
    torch.testing.assert_close(out.sprite_search.change, expected.change)
    torch.testing.assert_close(out.sprite_search.assignment, expected.assignment)
    assert float(out.sprite_search.change.detach()) != 0.0


def test_sprites_need_keypoints_and_a_pixel_head() -> None:
    with pytest.raises(ValueError, match="keypoint_sprites draws the keypoints"):
        make_student(keypoint_sprites=True)
