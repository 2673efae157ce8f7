"""Decoded frames -> one labelled grid image per frame (student row, optional teacher row).

Columns: input (when images are given), then PCA, masks, prompted masks, depth and pixels per
decoding teacher. Student and teacher rows share every normalisation: the PCA basis (set when
decoding), the mask thresholds (set when decoding) and the depth range (set here, over both rows
and every frame, so a video's colours do not flicker).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from distill.decode.colour import ValueRange, colormap, masks_by_area, overlay_masks
from distill.decode.frames import PIXEL_HEAD, DecodedFrames
from distill.decode.grid import MIN_CELL, GridRow, cell_size, compose_grid, fit_cell
from distill.geometry import check_image_batch

MASK_BASE = (48, 48, 48)  # what masks are painted on when there is no input image (decode_z)
POINT_COLOURS = {1: (40, 220, 40), 0: (230, 40, 40)}


@dataclass(frozen=True)
class Column:
    """One grid column: what it shows (``kind``) and whose output (``key``, a teacher or the pixel head)."""

    kind: str  # "input", "pca", "masks", "prompts", "depth", "pixels"
    key: str

    @property
    def label(self) -> str:
        if self.kind == "input":
            return "input"
        who = "head" if self.key == PIXEL_HEAD else self.key
        return f"{'PCA' if self.kind == 'pca' else self.kind} ({who})"


def columns_of(decoded: DecodedFrames, with_input: bool) -> list[Column]:
    """The grid's columns in display order."""
    columns = [Column("input", "")] if with_input else []
    columns += [Column("pca", k) for k in decoded.pca]
    columns += [Column("masks", k) for k in decoded.masks]
    columns += [Column("prompts", k) for k in decoded.prompt_masks]
    columns += [Column("depth", k) for k in decoded.depth]
    pixel_keys = sorted(decoded.pixels, key=lambda k: (k != PIXEL_HEAD, k))
    return columns + [Column("pixels", k) for k in pixel_keys]


def depth_ranges(*rows: DecodedFrames | None) -> dict[str, ValueRange]:
    """One display range per depth teacher, covering every row and every frame."""
    keys = {k for row in rows if row is not None for k in row.depth}
    return {
        k: ValueRange.covering([row.depth[k] for row in rows if row is not None and k in row.depth])
        for k in keys
    }


def _uint8(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] float [0, 1] or uint8 -> uint8 [H, W, 3]."""
    if image.dtype != torch.uint8:
        image = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return image.permute(1, 2, 0).cpu().numpy()


def _upscaled_mask(mask: np.ndarray, cell: int) -> np.ndarray:
    return (
        np.asarray(
            Image.fromarray(mask.astype(np.uint8) * 255).resize((cell, cell), Image.Resampling.NEAREST)
        )
        > 0
    )


class _Painter:
    """Draws the cells of one frame, at the grid's cell size."""

    def __init__(
        self, cell: int, image_size: int, base: np.ndarray | None, ranges: Mapping[str, ValueRange]
    ) -> None:
        self.cell = cell
        self.scale = cell / image_size
        self.base = (
            np.asarray(fit_cell(base, cell))
            if base is not None
            else np.full((cell, cell, 3), MASK_BASE, np.uint8)
        )
        self.ranges = ranges

    def cell_of(self, decoded: DecodedFrames, column: Column, t: int) -> tuple[np.ndarray | None, str]:
        kind, key = column.kind, column.key
        if kind == "pca" and key in decoded.pca:
            return (decoded.pca[key][t].numpy() * 255).round().astype(np.uint8), ""
        if kind == "masks" and key in decoded.masks:
            masks = [_upscaled_mask(m, self.cell) for m in masks_by_area(decoded.masks[key][t])]
            return overlay_masks(self.base, masks), f"{len(masks)} mask{'' if len(masks) == 1 else 's'}"
        if kind == "prompts" and key in decoded.prompt_masks:
            return self._prompted(decoded, key, t), ""
        if kind == "depth" and key in decoded.depth:
            return colormap(decoded.depth[key][t].numpy(), self.ranges[key]), ""
        if kind == "pixels" and key in decoded.pixels:
            return _uint8(decoded.pixels[key][t]), ""
        return None, ""

    def _prompted(self, decoded: DecodedFrames, key: str, t: int) -> np.ndarray:
        masks = [_upscaled_mask(m.numpy(), self.cell) for m in decoded.prompt_masks[key][t]]
        canvas = Image.fromarray(overlay_masks(self.base, masks))
        draw = ImageDraw.Draw(canvas)
        radius = max(3, self.cell // 48)
        for x, y, label in decoded.prompts.points:
            cx, cy = x * self.scale, y * self.scale
            draw.ellipse(
                (cx - radius, cy - radius, cx + radius, cy + radius),
                fill=POINT_COLOURS[label],
                outline="white",
            )
        for x0, y0, x1, y1 in decoded.prompts.boxes:
            s = self.scale
            draw.rectangle(
                (x0 * s, y0 * s, x1 * s - 1, y1 * s - 1), outline=(255, 255, 255), width=max(1, radius // 2)
            )
        return np.asarray(canvas)


def render(
    student: DecodedFrames,
    teacher: DecodedFrames | None = None,
    images: torch.Tensor | None = None,
    *,
    title: str | None = None,
    min_cell: int = MIN_CELL,
    ranges: Mapping[str, ValueRange] | None = None,
    labels: tuple[str, str] = ("student", "teacher"),
    teacher_images: torch.Tensor | None = None,
) -> list[Image.Image]:
    """One grid per frame: a "student" row and, with ``teacher``, a "teacher" row.

    ``images`` [T, 3, S, S] adds the input column and is the backdrop of the mask overlays;
    without it (e.g. a world-model rollout) the input column is left out. ``title`` is drawn above
    each grid with the frame number for clips longer than one frame. ``ranges`` overrides the depth
    display ranges (e.g. to share them across separately rendered chunks). ``labels`` name the two
    rows (a world-model rollout beside the encoded ground truth, say). ``teacher_images`` are the
    teacher row's input column and mask backdrop when the teachers saw other images (paired data).
    """
    frames = student.frames
    if teacher is not None and teacher.frames != frames:
        raise ValueError(f"the teacher row has {teacher.frames} frames, the student row {frames}")
    for given in (images, teacher_images):
        if given is not None:
            check_image_batch(given, "images to render")
            if given.shape[0] != frames:
                raise ValueError(f"{given.shape[0]} input images for {frames} decoded frames")
    columns = columns_of(student, images is not None)
    if not columns:
        raise ValueError("nothing to render: the decoded frames hold no targets and no images were given")
    cell = cell_size(student.image_size, min_cell)
    shared = dict(ranges) if ranges is not None else depth_ranges(student, teacher)
    grids = []
    for t in range(frames):
        base = _uint8(images[t]) if images is not None else None
        bases = (base, _uint8(teacher_images[t]) if teacher_images is not None else base)
        rows = []
        for label, decoded, row_base in zip(labels, (student, teacher), bases, strict=True):
            if decoded is None:
                continue
            painter = _Painter(cell, student.image_size, row_base, shared)
            cells, notes = [], []
            for column in columns:
                if column.kind == "input":
                    cells.append(row_base)
                    notes.append("")
                    continue
                array, note = painter.cell_of(decoded, column, t)
                cells.append(array)
                notes.append(note)
            rows.append(GridRow(label, cells, notes))
        heading = title
        if title is not None and frames > 1:
            heading = f"{title}  frame {t + 1}/{frames}"
        grids.append(compose_grid([c.label for c in columns], rows, cell, heading))
    return grids
