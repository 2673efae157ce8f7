"""The packaged teacher sets (configs/teachers/*.yaml) name registered teachers, each under its own name."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

import distill.configs
from distill.teachers import teacher_names

SETS = Path(distill.configs.__file__).parent / "teachers"


def entries(path: Path) -> dict[str, dict[str, object]]:
    loaded = OmegaConf.to_container(OmegaConf.load(path))
    assert isinstance(loaded, dict) and loaded, f"{path} holds no teachers"
    return {str(key): value for key, value in loaded.items()}


@pytest.mark.parametrize("path", sorted(SETS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_set_names_registered_teachers(path: Path) -> None:
    teachers = entries(path)
    assert all(key == entry["name"] for key, entry in teachers.items())
    assert set(teachers) <= set(teacher_names())


def test_the_world_model_and_modern_agglomerative_sets() -> None:
    assert set(entries(SETS / "worldmodel.yaml")) == {"dinov2", "dinov3", "vjepa2"}
    assert set(entries(SETS / "modern.yaml")) == {"siglip2", "dinov3", "sam2"}
