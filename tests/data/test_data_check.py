"""The check command: a sound dataset passes; each kind of damage is named by shard and key."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from data_helpers import FIVE, Built
from safetensors.torch import load, save

from distill.data.codec import read_metadata
from distill.data.loader import LoaderConfig, eval_batches, train_batches
from distill.data.shards import ShardError, iter_shard, list_keys, write_shard
from distill.preprocess import check
from distill.preprocess.check import check_dataset
from distill.stats import FeatureStats


def test_sound_dataset_passes(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    report = check_dataset(built.dataset, built.stats_dir)
    assert report.ok, report.problems
    assert report.samples == 36 and report.shards == 7
    assert check.main([str(built.dataset), "--stats-dir", str(built.stats_dir)]) == 0
    assert "OK" in capsys.readouterr().out


def test_truncated_image_tar_is_named_by_check_and_loader(
    built: Built, dataset_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shard = dataset_copy / "images" / "train-000001.tar"
    keys = list_keys(shard)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    report = check_dataset(dataset_copy)
    assert not report.ok
    first = report.problems[0]
    assert first.path == str(shard) and first.key in keys and "truncated or corrupt" in first.message
    assert check.main([str(dataset_copy)]) == 1
    assert f"first: {shard}" in capsys.readouterr().err
    cfg = LoaderConfig(
        dataset_copy, FIVE, built.stats_dir, global_batch=4, num_streams=1, split="train", eval_split="train"
    )
    with pytest.raises(ShardError, match=r"images/train-000001\.tar: unreadable tar in or after key"):
        list(eval_batches(cfg))


def test_feature_shard_missing_a_key_is_named_by_check_and_loader(built: Built, dataset_copy: Path) -> None:
    target = dataset_copy / "mae" / "train-000000.tar"
    keys = list_keys(dataset_copy / "images" / "train-000000.tar")
    with write_shard(target) as sink:
        for sample in iter_shard(built.dataset / "mae" / "train-000000.tar"):
            if sample.key != keys[2]:
                sink.write(sample.key, sample.files)
    report = check_dataset(dataset_copy)
    assert [(p.path, p.key) for p in report.problems] == [(str(target), keys[2])]
    assert f"has {keys[3]!r} at sample 2" in report.problems[0].message
    cfg = LoaderConfig(dataset_copy, FIVE, built.stats_dir, global_batch=2, num_streams=1, shuffle_buffer=1)
    # in process; and finished on a device, made ahead on the prefetch thread, in process and in a worker
    for variant in (cfg, replace(cfg, device="cpu"), replace(cfg, device="cpu", num_workers=1)):
        with pytest.raises(
            ShardError,
            match=rf"images/train-000000\.tar has '{keys[2]}' at sample 2 but .*mae/train-000000\.tar has '{keys[3]}'",
        ):
            for _ in train_batches(variant):
                pass


def test_nan_wrong_shape_stray_files_and_bad_stats_are_reported(
    built: Built, dataset_copy: Path, tmp_path: Path
) -> None:
    target = dataset_copy / "dinov2" / "val-000001.tar"
    samples = list(iter_shard(target))
    with write_shard(target) as sink:
        for i, sample in enumerate(samples):
            blob = sample.files["dinov2.safetensors"]
            if i == 1:
                tensors = load(blob)
                tensors["patch"][0, 0, 0] = float("nan")
                blob = save(tensors, metadata=read_metadata(blob, "x"))
            sink.write(sample.key, {"dinov2.safetensors": blob})
    (dataset_copy / "sam" / "train-000009.tar").write_bytes(b"")
    (dataset_copy / "clip" / ".val-000000.tar.x.tmp").write_bytes(b"")
    stats_dir = tmp_path / "stats"
    stats_dir.mkdir()
    for name in FIVE:
        FeatureStats.load(built.stats_dir / f"{name}.safetensors").save(stats_dir / f"{name}.safetensors")
    FeatureStats("sam", torch.zeros(7), torch.ones(7), None, None, 3).save(stats_dir / "sam.safetensors")
    problems = {(p.path, p.key): p.message for p in check_dataset(dataset_copy, stats_dir).problems}
    assert "non-finite values in patch" in problems[(str(target), samples[1].key)]
    assert "not listed in the manifest" in problems[(str(dataset_copy / "sam" / "train-000009.tar"), None)]
    assert "interrupted run" in problems[(str(dataset_copy / "clip" / ".val-000000.tar.x.tmp"), None)]
    assert "recompute them" in problems[(str(stats_dir / "sam.safetensors"), None)]
    assert len(problems) == 4


def test_missing_manifest(tmp_path: Path) -> None:
    report = check_dataset(tmp_path)
    assert not report.ok and "organize_webdataset.py" in report.problems[0].message
