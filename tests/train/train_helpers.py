"""Tiny real datasets (organize -> extract -> stats), the reference run, and a runner for the real script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from distill.preprocess.calc_stats import StatsConfig, compute_stats
from distill.preprocess.extract import ExtractConfig, TeacherJob, extract_features
from distill.preprocess.organize import OrganizeConfig, organize_images
from distill.synthetic import write_image_folder

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "train_rvfm.py"
OFFLINE_TEACHERS = ("dinov2", "mae")  # precomputed shards; clip runs online in the tests
CANONICAL = 32
SHARD = 6


@dataclass(frozen=True)
class TinyData:
    root: Path  # holds the datasets "base" and "domain"
    stats: dict[str, Path]  # dataset name -> its feature_stats folder


def _build(root: Path, name: str, train_per_class: int, val_per_class: int, seed: int) -> Path:
    source = root / "sources" / name
    write_image_folder(source / "train", classes=2, per_class=train_per_class, size=(48, 40), seed=seed)
    write_image_folder(source / "val", classes=2, per_class=val_per_class, size=(40, 48), seed=seed + 1)
    dataset = root / name
    organize_images(OrganizeConfig(source=source, dataset=dataset, size=CANONICAL, samples_per_shard=SHARD))
    jobs = tuple(TeacherJob(teacher, source="tiny") for teacher in OFFLINE_TEACHERS)
    extract_features(
        ExtractConfig(dataset=dataset, teachers=jobs, batch_size=16, device="cpu", progress=False)
    )
    stats = root / f"stats-{name}"
    compute_stats(StatsConfig(dataset=dataset, output_dir=stats))
    return stats


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> TinyData:
    """``base``: 24 train (4 shards) + 8 val images; ``domain``: another 12 + 4, for finetuning."""
    root = tmp_path_factory.mktemp("datasets")
    stats = {
        "base": _build(root, "base", train_per_class=12, val_per_class=4, seed=0),
        "domain": _build(root, "domain", train_per_class=6, val_per_class=2, seed=50),
    }
    return TinyData(root=root, stats=stats)


def train_env() -> dict[str, str]:
    env = dict(os.environ)
    env |= {"WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return env


def command(overrides: list[str], nproc: int | None) -> list[str]:
    """The real script, under torchrun (``nproc`` processes, gloo) or as one plain process."""
    if nproc is None:
        return [sys.executable, str(SCRIPT), *overrides]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [*launcher, str(SCRIPT), *overrides]


def run_train(
    overrides: list[str], nproc: int | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(overrides, nproc), cwd=REPO, env=train_env(), capture_output=True, text=True, timeout=timeout
    )


def data_overrides(data: TinyData, name: str = "base", streams: int = 4) -> list[str]:
    return [
        f"dataset.root={data.root}",
        f"dataset.name={name}",
        f"dataset.stats_dir={data.stats[name]}",
        f"dataset.num_streams={streams}",
        "teacher_source=tiny",
        "model=tiny",
    ]


# The run the end-to-end, equivalence, resume and finetune tests share: 2 ranks x 4 images,
# dinov2 + mae from shards, clip online (stats estimated), EMA, clipping, 4 checkpoints, keep 2.
REFERENCE_TRAINING = [
    "teachers=cdm",
    "teachers.clip.online=true",
    "training.steps=8",
    "training.lr=2e-3",
    "training.warmup_steps=2",
    "training.ema_decay=0.9",
    "training.val_every=4",
    "training.checkpoint_every=2",
    "training.keep_last=2",
    "training.online_stats_steps=2",
    "logging.log_every=2",
    "dataset.num_workers=1",
]
REFERENCE_BATCH = 4  # per rank


@dataclass(frozen=True)
class ReferenceRun:
    run_dir: Path
    overrides: list[str]  # everything but run_name and the per-rank batch size
    result: subprocess.CompletedProcess[str]


@pytest.fixture(scope="session")
def reference_run(tiny_data: TinyData, tmp_path_factory: pytest.TempPathFactory) -> ReferenceRun:
    output = tmp_path_factory.mktemp("runs")
    overrides = [*data_overrides(tiny_data), *REFERENCE_TRAINING, f"output_dir={output}"]
    result = run_train([*overrides, "run_name=reference", f"training.batch_size={REFERENCE_BATCH}"], nproc=2)
    assert result.returncode == 0, result.stderr[-4000:]
    return ReferenceRun(output / "reference", overrides, result)


def metric_records(run_dir: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The run's metrics.jsonl records, only those of ``kind`` ("train", "val") when given."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if kind is None or r["kind"] == kind]
