"""Shared fixtures: the tiny teachers, a few canonical-view frames, and a random-init tiny student
checkpoint whose stats come from those teachers (built once per session)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from distill.geometry import canonical_view
from distill.models.config import StudentConfig
from distill.models.student import Student
from distill.stats import FeatureStats, StatsAccumulator
from distill.synthetic import render_scene
from distill.teachers import Teacher, load_teacher

IMAGE_SIZE = 64  # the student's canonical view; SAM and MAE tiny teachers also run at 64
TEACHERS = ("clip", "depth_anything", "dinov2", "mae", "sam")  # clip has no decoder: it must be ignored


def canonical_frames(count: int, seed: int = 0) -> torch.Tensor:
    """uint8 [count, 3, S, S] canonical views of procedural scenes."""
    views = [canonical_view(render_scene(seed + i, (80, 64)), IMAGE_SIZE) for i in range(count)]
    return torch.stack([torch.from_numpy(np.array(v)).permute(2, 0, 1) for v in views])


@pytest.fixture(scope="session")
def teachers() -> dict[str, Teacher]:
    return {name: load_teacher(name, "tiny", device="cpu") for name in TEACHERS}


@pytest.fixture(scope="session")
def frames() -> torch.Tensor:
    return canonical_frames(3)


@pytest.fixture(scope="session")
def stats(teachers: dict[str, Teacher]) -> dict[str, FeatureStats]:
    images = canonical_frames(6, seed=100)
    out = {}
    for name, teacher in teachers.items():
        accumulator = StatsAccumulator(name)
        accumulator.add(teacher(images))
        out[name] = accumulator.finish()
    return out


@pytest.fixture(scope="session")
def checkpoint(
    tmp_path_factory: pytest.TempPathFactory, teachers: dict[str, Teacher], stats: dict[str, FeatureStats]
) -> Path:
    config = StudentConfig.from_preset(
        "tiny",
        {name: t.spec for name, t in teachers.items()},
        image_size=IMAGE_SIZE,
        patch_size=16,
        decoder_depth=2,
    )
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("student") / "checkpoint"
    Student(config, load_pretrained=False).save_pretrained(directory, stats)
    return directory


@pytest.fixture(scope="session")
def student(checkpoint: Path) -> Student:
    return Student.from_pretrained(checkpoint, device="cpu")
