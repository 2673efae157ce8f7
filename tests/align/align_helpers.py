"""The align tests' shared paired dataset and trainer call (fixtures in conftest.py): inverted -> clean scenes, tiny DINOv2."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from distill.data.manifest import load_manifest
from distill.models import Student, StudentConfig
from distill.preprocess.calc_stats import StatsConfig, compute_stats
from distill.preprocess.extract import ExtractConfig, TeacherJob, extract_features
from distill.preprocess.organize import OrganizeConfig, organize_images
from distill.stats import FeatureStats
from distill.synthetic import write_paired_folders

REPO = Path(__file__).resolve().parents[2]
SIZE = 32

TrainFn = Callable[..., Path]  # (output dir, run name, *overrides) -> run dir


@dataclass(frozen=True)
class Paired:
    dataset: Path  # paired dataset: inverted source images, DINOv2 features of the clean targets
    stats: Path  # the dataset's stats folder (the target features')
    init: Path  # an untrained tiny student folder normalised with those stats


@pytest.fixture(scope="session")
def paired(tmp_path_factory: pytest.TempPathFactory) -> Paired:
    root = tmp_path_factory.mktemp("align")
    for split, seed in (("train", 0), ("val", 1)):
        write_paired_folders(
            root / "src" / split,
            root / "tgt" / split,
            "invert",
            2,
            8 if split == "train" else 2,
            (40, 32),
            seed,
        )
    dataset = root / "data" / "paired"
    organize_images(
        OrganizeConfig(root / "src", dataset, size=SIZE, samples_per_shard=4, target=root / "tgt")
    )
    extract_features(ExtractConfig(dataset, (TeacherJob("dinov2", "tiny"),), device="cpu", progress=False))
    compute_stats(StatsConfig(dataset=dataset, output_dir=root / "stats"))
    spec = load_manifest(dataset).teachers["dinov2"].target_spec
    torch.manual_seed(0)
    init = Student(
        StudentConfig.from_preset("tiny", {"dinov2": spec}, image_size=SIZE), load_pretrained=False
    )
    init.save_pretrained(root / "init", {"dinov2": FeatureStats.load(root / "stats" / "dinov2.safetensors")})
    return Paired(dataset, root / "stats", root / "init")


@pytest.fixture(scope="session")
def train_align(paired: Paired) -> TrainFn:
    """Run ``preset=align`` on the paired dataset for 4 steps (overrides on top) through the real CLI."""

    def run(output: Path, name: str, *extra: str) -> Path:
        overrides = [
            f"dataset.root={paired.dataset.parent}",
            f"dataset.name={paired.dataset.name}",
            "dataset.num_streams=2",
            "teachers=dinov2",
            "teacher_source=tiny",
            "model=tiny",
            "device=cpu",
            "preset=align",
            "adapter.rank=4",
            "training.batch_size=4",
            "training.steps=4",
            "training.lr=1e-2",
            "training.warmup_steps=0",
            "training.val_every=2",
            "training.checkpoint_every=2",
            "training.keep_last=0",
            "logging.log_every=1",
            f"output_dir={output}",
            f"run_name={name}",
            *extra,
        ]
        env = {
            "WANDB_MODE": "disabled",
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "PATH": "/usr/bin:/bin",
        }
        result = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "train_rvfm.py"), *overrides],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-4000:]
        return output / name

    return run
