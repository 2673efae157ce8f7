"""A small line plot drawn with PIL, so the demo report needs no plotting library."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from distill.io import atomic_path

PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]
Series = Sequence[tuple[float, float]]


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    return [low + (high - low) * i / (count - 1) for i in range(count)]


def line_plot(
    series: Mapping[str, Series],
    path: str | Path,
    title: str = "",
    size: tuple[int, int] = (640, 400),
    log_y: bool = False,
) -> Path:
    """Draw each named (x, y) series as a coloured line with axes, ticks and a legend; write a PNG."""
    points = {name: [(x, y) for x, y in values if math.isfinite(y)] for name, values in series.items()}
    points = {name: values for name, values in points.items() if values}
    if not points:
        raise ValueError(f"nothing to plot for {path}: every series is empty or non-finite")
    if log_y and any(y <= 0 for values in points.values() for _, y in values):
        raise ValueError(f"log_y needs positive values ({path})")

    def fy(y: float) -> float:
        return math.log10(y) if log_y else y

    xs = [x for values in points.values() for x, _ in values]
    ys = [fy(y) for values in points.values() for _, y in values]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    width, height = size
    left, right, top, bottom = 70, 20, 30, 50
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)

    def to_px(x: float, y: float) -> tuple[float, float]:
        px = left + (x - x0) / (x1 - x0) * (width - left - right)
        py = height - bottom - (fy(y) - y0) / (y1 - y0) * (height - top - bottom)
        return px, py

    draw.rectangle((left, top, width - right, height - bottom), outline="black")
    for tick in _ticks(y0, y1):
        py = height - bottom - (tick - y0) / (y1 - y0) * (height - top - bottom)
        label = f"{10**tick:.3g}" if log_y else f"{tick:.3g}"
        draw.line((left - 4, py, left, py), fill="black")
        draw.text((4, py - 6), label, fill="black")
    for tick in _ticks(x0, x1):
        px = left + (tick - x0) / (x1 - x0) * (width - left - right)
        draw.line((px, height - bottom, px, height - bottom + 4), fill="black")
        draw.text((px - 10, height - bottom + 8), f"{tick:.0f}", fill="black")
    draw.text((left, 8), title, fill="black")
    for index, (name, values) in enumerate(points.items()):
        colour = PALETTE[index % len(PALETTE)]
        pixels = [to_px(x, y) for x, y in values]
        if len(pixels) == 1:
            px, py = pixels[0]
            draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=colour)
        else:
            draw.line(pixels, fill=colour, width=2)
        legend_x, legend_y = width - right - 160, top + 10 + 14 * index
        draw.line((legend_x, legend_y + 5, legend_x + 16, legend_y + 5), fill=colour, width=3)
        draw.text((legend_x + 22, legend_y), name, fill=colour)
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
