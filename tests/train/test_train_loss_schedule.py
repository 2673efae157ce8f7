"""The trainer applies the loss weights in force at each optimiser step (the sprites' assignment fade)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_train_guards import in_process, small_run
from train_helpers import TinyData, metric_records

from distill.train.trainer import train


def test_the_assignment_weight_fades_step_by_step(tiny_data: TinyData, tmp_path: Path) -> None:
    """With the change part off, sprites/total is the assignment times its weight, fading over 3 steps:
    0.1, 0.1 x 2/3 and 0.1 x 1/3 at optimiser steps 0-2 (train records 1-3). (Validation runs the student
    in eval mode, where the sprites' search is not computed.)"""
    cfg, resolved = in_process(
        small_run(
            tiny_data,
            tmp_path,
            "fade",
            "model.z_keypoints=4",
            "model.keypoint_sprites=true",
            "training.loss.sprite_search=0",
            "training.loss.sprite_assign=0.1",
            "training.loss.sprite_assign_fade_steps=3",
            "logging.log_every=1",
        )
    )
    run_dir = train(cfg, resolved)
    records = metric_records(run_dir)
    steps = {record["step"]: record for record in records if record["kind"] == "train"}
    assert sorted(steps) == [1, 2, 3]
    for step, weight in ((1, 0.1), (2, 0.1 * 2 / 3), (3, 0.1 / 3)):
        assert steps[step]["sprites/assignment"] > 0
        assert steps[step]["sprites/total"] == pytest.approx(
            weight * steps[step]["sprites/assignment"], rel=1e-5
        )
