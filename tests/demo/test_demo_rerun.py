"""A second demo in the same output folder starts over instead of meeting the last run's checkpoints."""

from __future__ import annotations

from pathlib import Path

from distill.demo.pipeline import DemoConfig, DemoResult, clear_previous_run


def test_a_previous_demo_run_is_cleared_and_nothing_else(tmp_path: Path) -> None:
    result = DemoResult(DemoConfig(output=tmp_path))
    checkpoint = result.run_dir / "checkpoints" / "step_00000300" / "state.safetensors"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"x")
    kept = tmp_path / "media" / "keep.txt"
    kept.parent.mkdir()
    kept.write_text("data")
    clear_previous_run(result)
    assert not result.run_dir.exists()
    assert kept.read_text() == "data"
    clear_previous_run(result)  # nothing to clear: no error
