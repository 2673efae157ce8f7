"""The decode command with a student trained against dinov3 and sam2: DINOv3 PCA maps and SAM 2 masks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from teacher_helpers import scene_batch

from distill.decode.cli import main
from distill.models.config import StudentConfig
from distill.models.student import Student
from distill.stats import StatsAccumulator
from distill.synthetic import render_scene
from distill.teachers import load_teacher

TEACHERS = ("dinov3", "sam2")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    teachers = {name: load_teacher(name, "tiny", device="cpu") for name in TEACHERS}
    images = scene_batch(4, seed=50)
    stats = {}
    for name, teacher in teachers.items():
        accumulator = StatsAccumulator(name)
        accumulator.add(teacher(images))
        stats[name] = accumulator.finish()
    config = StudentConfig.from_preset(
        "tiny", {name: t.spec for name, t in teachers.items()}, image_size=64, patch_size=16, decoder_depth=2
    )
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("student") / "checkpoint"
    Student(config, load_pretrained=False).save_pretrained(directory, stats)
    return directory


def test_dinov3_pca_and_sam2_masks_through_the_decode_command(tmp_path: Path, checkpoint: Path) -> None:
    image = tmp_path / "scene.png"
    render_scene(3, (80, 64)).save(image)
    fast_masks = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
    argv = ["--checkpoint", str(checkpoint), "--media", str(image), "--output", str(tmp_path / "out")]
    assert main([*argv, "--targets", "pca,masks", "--compare-teachers", *fast_masks]) == 0
    grid = Image.open(tmp_path / "out" / "scene.png")
    assert grid.width > 3 * 192 and grid.height > 2 * 192  # input, PCA, masks; student and teacher rows
