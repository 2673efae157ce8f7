"""Shared constants and fixtures of the data pipeline tests: one small dataset built with the real tiny teachers.

Test modules import from here (a unique module name: ``conftest`` is ambiguous when tests/data
and tests/train run in one session); tests/data/conftest.py registers the fixtures.

The session dataset is built once (organize -> extract in-process -> stats) and must not be
modified; tests that damage a dataset work on ``dataset_copy``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from data_bad_inputs import write_bad_inputs

from distill.data.loader import LoaderConfig
from distill.data.manifest import load_manifest
from distill.data.shards import iter_shard
from distill.distributed import DistContext
from distill.preprocess.calc_stats import StatsConfig, compute_stats
from distill.preprocess.extract import ExtractConfig, TeacherJob, run_extraction
from distill.preprocess.organize import OrganizeConfig, organize_images
from distill.synthetic import write_image_folder
from distill.teachers import Teacher, load_teacher

FIVE = ("clip", "dinov2", "mae", "sam", "depth_anything")
SIZE = 64
PER_SHARD = 6
# A mix of every storage dtype, and SAM area-downsampled from its 8x8 tiny grid.
JOBS = (
    TeacherJob("clip", "tiny", None, "int8"),
    TeacherJob("dinov2", "tiny", None, "bf16"),
    TeacherJob("mae", "tiny", None, "fp16"),
    TeacherJob("sam", "tiny", None, "int8", (4, 4)),
    TeacherJob("depth_anything", "tiny", None, "int8"),
)


@dataclass(frozen=True)
class Built:
    source: Path
    dataset: Path
    stats_dir: Path
    expected_bad: dict[str, str]  # relpath under source -> expected reason words ("" = accepted)


def write_source(root: Path) -> dict[str, str]:
    """ImageNet-style input: train/ (2 classes x 12) and val/ (2 x 4), plus every bad kind in train/class_0."""
    write_image_folder(root / "train", classes=2, per_class=12, size=(96, 80), seed=0)
    write_image_folder(root / "val", classes=2, per_class=4, size=(80, 96), seed=1)
    bad = write_bad_inputs(root / "train" / "class_0")
    return {f"train/class_0/{name}": reason for name, reason in bad.items()}


@pytest.fixture(scope="session")
def tiny_teachers() -> dict[str, Teacher]:
    return {name: load_teacher(name, "tiny", device="cpu") for name in FIVE}


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_teachers: dict[str, Teacher]) -> Built:
    root = tmp_path_factory.mktemp("data")
    expected = write_source(root / "source")
    dataset = root / "ds"
    organize_images(OrganizeConfig(root / "source", dataset, size=SIZE, samples_per_shard=PER_SHARD))
    cfg = ExtractConfig(dataset, JOBS, batch_size=4, progress=False)
    run_extraction(cfg, tiny_teachers, DistContext())
    compute_stats(StatsConfig(dataset, (), "train", root / "stats"))
    return Built(root / "source", dataset, root / "stats", expected)


@pytest.fixture
def dataset_copy(built: Built, tmp_path: Path) -> Path:
    """A private copy of the built dataset, for tests that damage it."""
    target = tmp_path / "ds"
    shutil.copytree(built.dataset, target)
    return target


def frame_metadata(dataset: Path) -> list[dict]:
    """Every image shard's JSON metadata, in manifest order (splits, shards, members)."""
    out = []
    for info in load_manifest(dataset).splits.values():
        for shard in info.shards:
            out += [json.loads(s.files["json"]) for s in iter_shard(dataset / "images" / shard.name)]
    return out


def loader_config(built: Built, **overrides: object) -> LoaderConfig:
    """The loader tests' configuration of the session dataset: 2 streams, global batch 4, seed 3."""
    base = LoaderConfig(
        built.dataset, FIVE, built.stats_dir, global_batch=4, num_streams=2, seed=3, shuffle_buffer=5
    )
    return replace(base, **overrides)  # type: ignore[arg-type]
