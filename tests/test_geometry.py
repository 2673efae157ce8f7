"""The canonical view and batch checks that every teacher and the student rely on."""

import numpy as np
import pytest
import torch
from PIL import Image

from distill.geometry import canonical_view, resize_and_normalize, to_unit_float


def test_canonical_view_crops_the_centre_of_the_long_side() -> None:
    # A 200x100 image: left quarter red, middle half green, right quarter blue.
    array = np.zeros((100, 200, 3), np.uint8)
    array[:, :50, 0] = 255
    array[:, 50:150, 1] = 255
    array[:, 150:, 2] = 255
    view = np.asarray(canonical_view(Image.fromarray(array), 50))
    assert view.shape == (50, 50, 3)
    # Short side 100 -> 50 halves everything; the centre 50 columns of the 100-wide result are all green.
    assert (view[:, 5:-5, 1] > 200).all() and (view[:, 5:-5, 0] < 60).all() and (view[:, 5:-5, 2] < 60).all()


@pytest.mark.parametrize("size", [(37, 91), (91, 37), (64, 64), (1, 300)])
def test_canonical_view_is_always_square_at_the_requested_size(size: tuple[int, int]) -> None:
    assert canonical_view(Image.new("RGB", size, (10, 20, 30)), 32).size == (32, 32)


def test_canonical_view_refuses_non_rgb() -> None:
    with pytest.raises(ValueError, match="mode 'L'"):
        canonical_view(Image.new("L", (8, 8)), 4)


def test_uint8_and_float_paths_agree() -> None:
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    from_uint8 = resize_and_normalize(images, 8, mean, std)
    from_float = resize_and_normalize(images.float() / 255, 8, mean, std)
    assert from_uint8.shape == (2, 3, 8, 8)
    torch.testing.assert_close(from_uint8, from_float)


def test_normalisation_matches_a_direct_computation() -> None:
    images = torch.rand(1, 3, 4, 4)
    out = resize_and_normalize(images, 4, (0.1, 0.2, 0.3), (0.5, 0.5, 0.25))
    expected = (images - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / torch.tensor(
        [0.5, 0.5, 0.25]
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (torch.zeros(3, 8, 8), r"\[B, 3, H, W\].*images\[None\]"),
        (torch.zeros(1, 1, 8, 8), r"got \(1, 1, 8, 8\)"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.int64), "dtype torch.int64"),
    ],
)
def test_bad_batches_name_the_problem(batch: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_unit_float(batch)
