"""organize -> extract under real torchrun (2 processes, gloo) -> stats (torchrun) -> check -> one loader epoch.

Uses the five real tiny teachers through load_teacher, the real scripts and the real webdataset
shards. The train split is 28 images in 4 shards of 7, dealt into 2 streams of 14: seven global
batches of 4 are exactly one epoch of every stream, so every key must appear exactly once.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from data_helpers import FIVE, write_source

from distill.data.loader import LoaderConfig, eval_batches, train_batches
from distill.data.manifest import load_manifest
from distill.data.shards import list_keys
from distill.preprocess import check, organize
from distill.preprocess.calc_stats import StatsConfig, compute_stats
from distill.preprocess.rejected import read_rejections
from distill.stats import FeatureStats

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "preprocessing"


def _torchrun(script: str, *args: str) -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(SCRIPTS / script),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"


@pytest.mark.slow
def test_pipeline_end_to_end_with_five_tiny_teachers_under_torchrun(tmp_path: Path) -> None:
    expected_bad = write_source(tmp_path / "source")
    dataset, stats_dir = tmp_path / "ds", tmp_path / "feature_stats"
    assert (
        organize.main([str(tmp_path / "source"), str(dataset), "--size", "64", "--samples-per-shard", "7"])
        == 0
    )
    rejected = {r.source for r in read_rejections(dataset)}
    assert rejected == {path for path, reason in expected_bad.items() if reason}

    _torchrun(
        "feature_extraction.py", str(dataset), "--teachers", *FIVE, "--source", "tiny", "--storage", "int8",
        "--storage-for", "dinov2=bf16", "--stored-grid", "sam=4x4", "--batch-size", "4", "--no-progress",
    )  # fmt: skip
    manifest = load_manifest(dataset)
    assert set(manifest.teachers) == set(FIVE)
    assert all(r.complete_splits == ("train", "val") for r in manifest.teachers.values())
    train = manifest.splits["train"]
    assert [s.count for s in train.shards] == [7, 7, 7, 7]
    for shard in [*train.shards, *manifest.splits["val"].shards]:
        keys = list_keys(dataset / "images" / shard.name)
        assert all(list_keys(dataset / name / shard.name) == keys for name in FIVE)

    _torchrun("calc_feature_stats.py", str(dataset), "--output-dir", str(stats_dir))
    single = compute_stats(
        StatsConfig(dataset, FIVE, "train", tmp_path / "single")
    )  # one process, same features
    for name in FIVE:
        merged = FeatureStats.load(stats_dir / f"{name}.safetensors")
        assert merged.count == single[name].count == 28
        for a, b in zip(merged.tensors().values(), single[name].tensors().values(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

    assert check.main([str(dataset), "--stats-dir", str(stats_dir)]) == 0

    cfg = LoaderConfig(
        dataset, FIVE, stats_dir, global_batch=4, num_streams=2, seed=11, shuffle_buffer=4, num_workers=2
    )
    epoch = list(itertools.islice(train_batches(cfg), 7))
    keys = [k for batch in epoch for k in batch.keys]
    all_train = [k for s in train.shards for k in list_keys(dataset / "images" / s.name)]
    assert sorted(keys) == sorted(all_train) and len(set(keys)) == 28
    specs = {name: record.target_spec for name, record in manifest.teachers.items()}
    for name in FIVE:
        patch = torch.cat([b.targets[name].patch for b in epoch])
        spec = specs[name]
        assert patch.shape == (28, *spec.grid, spec.channels) and patch.dtype == torch.float32
        # normalised with stats of exactly these samples: zero mean, unit std per channel
        rows = patch.reshape(-1, spec.channels).double()
        torch.testing.assert_close(
            rows.mean(0), torch.zeros(spec.channels, dtype=torch.float64), atol=1e-4, rtol=0
        )
        torch.testing.assert_close(
            rows.std(0, correction=0), torch.ones(spec.channels, dtype=torch.float64), atol=1e-3, rtol=0
        )
        if spec.cls_channels is not None:
            cls = torch.cat([b.targets[name].cls for b in epoch])  # type: ignore[misc]
            assert cls.shape == (28, spec.cls_channels)
            torch.testing.assert_close(
                cls.double().mean(0), torch.zeros(spec.cls_channels, dtype=torch.float64), atol=1e-4, rtol=0
            )
    assert specs["sam"].grid == (4, 4)
    assert all(b.images.shape == (4, 3, 64, 64) and b.images.dtype == torch.uint8 for b in epoch)
    val = [k for rank in range(2) for b in eval_batches(cfg, rank, 2) for k in b.keys]
    assert sorted(val) == sorted(
        k for s in manifest.splits["val"].shards for k in list_keys(dataset / "images" / s.name)
    )
