"""The report's line plot: drawn where the data says, refusing what cannot be drawn."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distill.demo.plot import PALETTE, line_plot


def test_a_rising_line_goes_from_bottom_left_to_top_right(tmp_path: Path) -> None:
    path = line_plot({"up": [(0, 0.0), (10, 1.0)]}, tmp_path / "p.png", size=(640, 400))
    pixels = np.asarray(Image.open(path).convert("RGB"))
    ys, xs = np.nonzero((pixels == PALETTE[0]).all(-1)[:, :400])  # the legend swatch is further right
    assert xs.min() < 80  # the line starts at the left axis (x = 70)
    left, right = ys[xs == xs.min()].mean(), ys[xs == xs.max()].mean()
    assert left > right + 100  # image rows grow downwards: the line climbs across the plot


def test_non_finite_points_are_dropped_and_empty_plots_refused(tmp_path: Path) -> None:
    line_plot({"a": [(0, 1.0), (1, float("nan")), (2, 2.0)]}, tmp_path / "ok.png")
    with pytest.raises(ValueError, match="nothing to plot"):
        line_plot({"a": [(0, float("inf"))]}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="log_y needs positive"):
        line_plot({"a": [(0, 0.0)]}, tmp_path / "log.png", log_y=True)
