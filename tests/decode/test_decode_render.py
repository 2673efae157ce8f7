"""Grids: labelled, upscaled without blending, and with one depth range for both rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from distill.decode import PIXEL_HEAD, DecodedFrames, Prompts, render
from distill.decode.colour import PALETTE, ValueRange, colormap, overlay_masks
from distill.decode.grid import GridRow, cell_size, compose_grid, fit_cell, grid_layout


def _decoded(depth: torch.Tensor, seed: int = 0) -> DecodedFrames:
    g = torch.Generator().manual_seed(seed)
    frames = depth.shape[0]
    mask = np.zeros((64, 64), dtype=bool)
    mask[8:24, 8:40] = True
    return DecodedFrames(
        frames=frames,
        image_size=64,
        pca={"dinov2": torch.rand(frames, 8, 8, 3, generator=g)},
        masks={"sam": [[{"segmentation": mask, "area": int(mask.sum())}] for _ in range(frames)]},
        depth={"depth_anything": depth},
        pixels={PIXEL_HEAD: torch.rand(frames, 3, 64, 64, generator=g)},
    )


def _cell(
    grid: Image.Image, columns: int, rows: list[str], row: int, column: int, title: str | None
) -> np.ndarray:
    layout = grid_layout(columns, rows, cell_size(64), title)
    assert grid.size == layout.size
    x, y = layout.cell_origin(row, column)
    return np.asarray(grid)[y : y + layout.cell, x : x + layout.cell]


def test_cells_are_exact_nearest_upscales_and_depth_range_is_shared() -> None:
    student_depth = torch.full((2, 32, 32), 1.0)
    teacher_depth = torch.linspace(0, 2, 32 * 32).reshape(1, 32, 32).repeat(2, 1, 1)
    student, teacher = _decoded(student_depth), _decoded(teacher_depth, seed=1)
    images = torch.randint(
        0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(2)
    )
    grids = render(student, teacher, images, title="clip")
    assert len(grids) == 2
    rows = ["student", "teacher"]
    cell = cell_size(64)
    assert cell == 192  # 64 px outputs are enlarged 3x
    # input column: the image, each pixel a 3x3 block
    expected_input = np.kron(images[1].permute(1, 2, 0).numpy(), np.ones((3, 3, 1), dtype=np.uint8))
    assert np.array_equal(_cell(grids[1], 5, rows, 0, 0, "clip"), expected_input)
    # PCA: each of the 8x8 tokens is a solid 24x24 block of its colour
    pca = (student.pca["dinov2"][1].numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(
        _cell(grids[1], 5, rows, 0, 1, "clip"), np.kron(pca, np.ones((24, 24, 1), dtype=np.uint8))
    )
    # depth: one range over both rows, so the student's constant 1.0 is mid-scale, not the top colour
    shared = ValueRange(0.0, 2.0)
    student_depth_cell = _cell(grids[0], 5, rows, 0, 3, "clip")
    assert np.array_equal(student_depth_cell[0, 0], colormap(np.array([[1.0]]), shared)[0, 0])
    teacher_depth_cell = _cell(grids[0], 5, rows, 1, 3, "clip")
    expected_teacher = np.kron(colormap(teacher_depth[0].numpy(), shared), np.ones((6, 6, 1), dtype=np.uint8))
    assert np.array_equal(teacher_depth_cell, expected_teacher)
    # masks are painted over the input with the first palette colour
    mask_cell = _cell(grids[0], 5, rows, 0, 2, "clip")
    base = np.kron(images[0].permute(1, 2, 0).numpy(), np.ones((3, 3, 1), dtype=np.uint8))
    inside = overlay_masks(base[30:31, 30:31], [np.ones((1, 1), dtype=bool)])
    assert np.array_equal(mask_cell[30, 30], inside[0, 0])
    assert np.array_equal(mask_cell[150, 150], base[150, 150])


def test_decode_z_style_render_has_no_input_column_and_na_for_missing_teacher_cells() -> None:
    student = _decoded(torch.rand(1, 64, 64))
    teacher = _decoded(torch.rand(1, 64, 64))
    del teacher.pixels[PIXEL_HEAD]  # the pixel head has no teacher counterpart
    (grid,) = render(student, teacher)
    rows = ["student", "teacher"]
    pixel_cell = _cell(grid, 4, rows, 1, 3, None)
    assert (pixel_cell[:20, :20] == 228).all()  # the grey 'n/a' cell
    assert grid.width < 5 * 200 + 200  # four cells and the label column: no input column


def test_prompt_cell_marks_points_and_boxes() -> None:
    decoded = _decoded(torch.rand(1, 64, 64))
    mask = torch.zeros(1, 1, 64, 64, dtype=torch.bool)
    decoded.prompt_masks = {"sam": mask}
    decoded.prompts = Prompts(points=((10.0, 20.0, 1),), boxes=((30.0, 30.0, 60.0, 60.0),))
    (grid,) = render(decoded)
    cell = _cell(grid, 5, ["student"], 0, 2, None)  # pca, masks, prompts, depth, pixels
    assert tuple(cell[20 * 3, 10 * 3]) == (40, 220, 40)  # the foreground point, in green
    assert tuple(cell[45 * 3, 30 * 3]) == (255, 255, 255)  # the box's left edge


def test_fit_cell_and_grid_validation() -> None:
    small = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3)
    assert np.array_equal(np.asarray(fit_cell(small, 6)), np.kron(small, np.ones((3, 3, 1), dtype=np.uint8)))
    big = np.zeros((400, 400, 3), dtype=np.uint8)
    assert fit_cell(big, 100).size == (100, 100)
    with pytest.raises(ValueError, match="uint8"):
        fit_cell(small.astype(np.float32), 6)
    with pytest.raises(ValueError, match="has 1 cells for 2 columns"):
        compose_grid(["a", "b"], [GridRow("x", [small])], 10)
    assert cell_size(224) == 224 and cell_size(56) == 224 and cell_size(100) == 200


def test_colormap_ends_and_palette() -> None:
    ramp = colormap(np.array([[0.0, 0.5, 1.0, 7.0]]), ValueRange(0.0, 1.0))
    assert tuple(ramp[0, 0]) == (0, 0, 4) and tuple(ramp[0, 2]) == (252, 255, 164)
    assert tuple(ramp[0, 3]) == tuple(ramp[0, 2])  # clipped above the range
    assert len({tuple(c) for c in PALETTE}) == len(PALETTE)
    with pytest.raises(ValueError, match="NaN"):
        ValueRange.covering([torch.tensor([0.0, float("nan")])])
