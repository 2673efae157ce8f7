"""Labelled grids: rows (student, teacher) by columns (input, PCA, masks, depth, pixels).

Cells are square RGB arrays of any size; each is resampled to one cell size (nearest neighbour
when enlarging, so a 16x16 PCA map shows its tokens as crisp blocks; box filter when shrinking).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MIN_CELL = 192  # tiny outputs are upscaled by an integer factor to at least this many pixels
BACKGROUND = (255, 255, 255)
EMPTY_CELL = (228, 228, 228)
TEXT = (20, 20, 20)
GAP = 4


@dataclass
class GridRow:
    """One row: its label and one cell per column (None draws an empty 'n/a' cell)."""

    label: str
    cells: Sequence[np.ndarray | None]
    notes: Sequence[str] = ()  # optional short text drawn in each cell's corner ("" for none)


def cell_size(image_size: int, minimum: int = MIN_CELL) -> int:
    """The smallest integer multiple of ``image_size`` that is at least ``minimum``."""
    if image_size <= 0:
        raise ValueError(f"image size must be positive, got {image_size}")
    return image_size * max(1, -(-minimum // image_size))


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def fit_cell(array: np.ndarray, size: int) -> Image.Image:
    """uint8 [H, W, 3] -> a ``size x size`` PIL image (nearest when enlarging, box when shrinking)."""
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"grid cells must be uint8 [H, W, 3], got {array.dtype} {array.shape}")
    image = Image.fromarray(array, "RGB")
    if image.size == (size, size):
        return image
    enlarging = image.width <= size and image.height <= size
    method = Image.Resampling.NEAREST if enlarging else Image.Resampling.BOX
    return image.resize((size, size), method)


def _text_width(
    draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont
) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return int(right - left)


@dataclass(frozen=True)
class GridLayout:
    """Where everything of a grid goes (shared by drawing and by tests that read cells back)."""

    columns: int
    rows: int
    cell: int
    font_size: int
    label_width: int
    header_height: int

    @property
    def size(self) -> tuple[int, int]:
        return (
            self.label_width + self.columns * (self.cell + GAP),
            self.header_height + self.rows * (self.cell + GAP),
        )

    def cell_origin(self, row: int, column: int) -> tuple[int, int]:
        """Top-left (x, y) pixel of cell (row, column)."""
        return self.label_width + column * (self.cell + GAP), self.header_height + row * (self.cell + GAP)


def grid_layout(columns: int, row_labels: Sequence[str], cell: int, title: str | None = None) -> GridLayout:
    """The layout :func:`compose_grid` draws with."""
    font_size = max(12, cell // 12)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = max(_text_width(probe, label, _font(font_size)) for label in row_labels) + 2 * font_size
    header_height = 2 * font_size + (2 * font_size if title else 0)
    return GridLayout(columns, len(row_labels), cell, font_size, label_width, header_height)


def compose_grid(
    columns: Sequence[str], rows: Sequence[GridRow], cell: int, title: str | None = None
) -> Image.Image:
    """Draw the labelled grid: a header row of column names, a label column of row names."""
    if not rows:
        raise ValueError("a grid needs at least one row")
    for row in rows:
        if len(row.cells) != len(columns):
            raise ValueError(f"row {row.label!r} has {len(row.cells)} cells for {len(columns)} columns")
    layout = grid_layout(len(columns), [row.label for row in rows], cell, title)
    font_size = layout.font_size
    font, note_font = _font(font_size), _font(max(10, font_size * 3 // 4))
    canvas = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    top = 0
    if title:
        draw.text((GAP, font_size // 2), title, fill=TEXT, font=font)
        top = 2 * font_size
    for j, name in enumerate(columns):
        x = layout.cell_origin(0, j)[0] + (cell - _text_width(draw, name, font)) // 2
        draw.text((x, top + font_size // 3), name, fill=TEXT, font=font)
    for i, row in enumerate(rows):
        y = layout.cell_origin(i, 0)[1]
        draw.text((font_size // 2, y + cell // 2 - font_size // 2), row.label, fill=TEXT, font=font)
        for j, array in enumerate(row.cells):
            x, y = layout.cell_origin(i, j)
            if array is None:
                draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=EMPTY_CELL)
                draw.text((x + cell // 2, y + cell // 2), "n/a", fill=TEXT, font=font, anchor="mm")
            else:
                canvas.paste(fit_cell(array, cell), (x, y))
            note = row.notes[j] if j < len(row.notes) else ""
            if note:
                box = draw.textbbox((x + 3, y + 3), note, font=note_font)
                draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=BACKGROUND)
                draw.text((x + 3, y + 3), note, fill=TEXT, font=note_font)
    return canvas
