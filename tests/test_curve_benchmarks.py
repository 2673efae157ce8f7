"""benchmarks/latent_quality.py and bits_curve.py: where their curve goes."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_a_run_beside_the_committed_json_leaves_the_readme_picture_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run of one point to check a change (``--output /tmp/...``) once overwrote the README's curve:
    the picture goes to docs/images only with the committed JSON, else beside the run's JSON."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    latent = importlib.import_module("latent_quality")

    def where(output: Path, plot: Path | None = None) -> Path:
        args = argparse.Namespace(output=output, plot=plot)
        return Path(latent.plot_path(args, "latent_quality", "dz_curve.png"))

    committed = ROOT / "benchmarks" / "results" / "latent_quality.json"
    assert where(committed) == ROOT / "docs" / "images" / "dz_curve.png"
    assert where(Path("/tmp/check/latent_quality.json")) == Path("/tmp/check/latent_quality.png")
    assert where(committed, Path("/tmp/elsewhere.png")) == Path("/tmp/elsewhere.png")
