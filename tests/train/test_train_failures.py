"""Faults stop the real script with a message naming the cause: a non-finite loss, a config error."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from train_helpers import TinyData, data_overrides, run_train

from distill.stats import FeatureStats
from distill.train import main


def test_zero_std_stats_stop_the_run_naming_step_and_teacher(tiny_data: TinyData, tmp_path: Path) -> None:
    """A corrupt stats file (dinov2 std = 0) makes dinov2's targets infinite: the first step must fail."""
    stats_dir = tmp_path / "stats"
    for name in ("dinov2", "mae"):
        stats = FeatureStats.load(tiny_data.stats["base"] / f"{name}.safetensors")
        if name == "dinov2":
            stats.patch_std = torch.zeros_like(stats.patch_std)
        stats.save(stats_dir / f"{name}.safetensors")
    overrides = [
        *data_overrides(tiny_data),
        f"dataset.stats_dir={stats_dir}",
        "dataset.num_workers=0",
        "teachers=cdm",
        "~teachers.clip",
        "training.steps=3",
        "training.batch_size=4",
        f"output_dir={tmp_path}",
        "run_name=nan-run",
    ]
    result = run_train(overrides)
    assert result.returncode != 0
    message = next(line for line in result.stderr.splitlines() if "non-finite loss" in line)
    assert "non-finite loss at step 1 on rank 0: teacher(s) dinov2 (dinov2/total=nan)" in message, message
    assert "mae" not in message
    assert not (tmp_path / "nan-run" / "checkpoints").exists()


@pytest.mark.filterwarnings(
    "ignore:Unable to enable fault handler"
)  # torchrun's @record under pytest's capture
def test_missing_dataset_root_names_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The script's entry point (in-process: it stops at the config, before torch.distributed or data)."""
    monkeypatch.setattr(sys, "argv", ["train_rvfm.py", "dataset.name=x", f"output_dir={tmp_path}"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    assert "config error: dataset.root: missing required value" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
