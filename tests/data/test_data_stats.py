"""Feature statistics: equal to numpy over the same stored features; mergeable; refused when they do not fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import FIVE, Built

from distill.data.codec import decode_sample
from distill.data.loader import LoaderConfig, train_batches
from distill.data.manifest import load_manifest
from distill.data.shards import iter_shard
from distill.features import TeacherOutput
from distill.preprocess.calc_stats import StatsConfig, compute_stats
from distill.stats import FeatureStats, StatsAccumulator, pack_state, unpack_state


def _stored(dataset: Path, teacher: str, split: str = "train") -> tuple[np.ndarray, np.ndarray | None]:
    patches, classes = [], []
    for shard in load_manifest(dataset).splits[split].shards:
        for sample in iter_shard(dataset / teacher / shard.name):
            features = decode_sample(sample.files[f"{teacher}.safetensors"], sample.key)
            patches.append(features.patch.numpy())
            if features.cls is not None:
                classes.append(features.cls.numpy())
    return np.stack(patches).astype(np.float64), np.stack(classes).astype(np.float64) if classes else None


@pytest.mark.parametrize("name", FIVE)
def test_stats_equal_numpy_over_the_stored_features(built: Built, name: str) -> None:
    stats = FeatureStats.load(built.stats_dir / f"{name}.safetensors")
    patch, cls = _stored(built.dataset, name)
    assert stats.teacher == name and stats.count == patch.shape[0] == 28
    rows = patch.reshape(-1, patch.shape[-1])
    np.testing.assert_allclose(stats.patch_mean.numpy(), rows.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.patch_std.numpy(), rows.std(0), rtol=1e-5, atol=1e-6)
    if cls is None:
        assert stats.cls_mean is None and stats.cls_std is None
    else:
        assert stats.cls_mean is not None and stats.cls_std is not None
        np.testing.assert_allclose(stats.cls_mean.numpy(), cls.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats.cls_std.numpy(), cls.std(0), rtol=1e-5, atol=1e-6)


def test_merge_of_two_accumulators_equals_one_over_the_union() -> None:
    gen = torch.Generator().manual_seed(0)
    a = TeacherOutput(torch.randn(5, 3, 3, 4, generator=gen) * 3 + 1, torch.randn(5, 6, generator=gen))
    b = TeacherOutput(torch.randn(9, 3, 3, 4, generator=gen) - 2, torch.randn(9, 6, generator=gen) * 5)
    left, right, union = StatsAccumulator("t"), StatsAccumulator("t"), StatsAccumulator("t")
    left.add(a)
    right.add(b)
    union.add(TeacherOutput(torch.cat([a.patch, b.patch]), torch.cat([a.cls, b.cls])))  # type: ignore[list-item]
    left.merge(right)
    merged, whole = left.finish(), union.finish()
    assert merged.count == whole.count == 14
    for x, y in zip(merged.tensors().values(), whole.tensors().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)
    # the all_gather form of an accumulator round-trips, empty ones included
    back = unpack_state("t", pack_state(union, 4, 6), 4, 6).finish()
    for x, y in zip(back.tensors().values(), whole.tensors().values(), strict=True):
        torch.testing.assert_close(x, y)
    empty = unpack_state("t", pack_state(StatsAccumulator("t"), 4, 6), 4, 6)
    assert empty.samples == 0 and empty.patch.count == 0
    with pytest.raises(ValueError, match="expected 5"):
        pack_state(union, 5, 6)


def test_stats_of_the_wrong_size_are_refused_naming_the_file(built: Built, tmp_path: Path) -> None:
    stats_dir = tmp_path / "stats"
    stats_dir.mkdir()
    for name in FIVE:
        (stats_dir / f"{name}.safetensors").write_bytes(
            (built.stats_dir / f"{name}.safetensors").read_bytes()
        )
    good = FeatureStats.load(stats_dir / "dinov2.safetensors")
    wrong = FeatureStats(
        "dinov2", good.patch_mean[:-1], good.patch_std[:-1], good.cls_mean, good.cls_std, good.count
    )
    wrong.save(stats_dir / "dinov2.safetensors")
    cfg = LoaderConfig(built.dataset, FIVE, stats_dir, global_batch=4, num_streams=2)
    with pytest.raises(
        ValueError,
        match=r"stats/dinov2\.safetensors: patch stats have \(31,\) channels but teacher 'dinov2' has 32",
    ):
        next(train_batches(cfg))
    FeatureStats.load(built.stats_dir / "clip.safetensors").save(stats_dir / "dinov2.safetensors")
    with pytest.raises(ValueError, match=r"dinov2\.safetensors: stats were computed for teacher 'clip'"):
        next(train_batches(cfg))
    (stats_dir / "dinov2.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"calc_feature_stats\.py"):
        next(train_batches(cfg))


def test_stats_need_complete_features(built: Built, tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="no features for teacher 'nope'"):
        compute_stats(StatsConfig(built.dataset, ("nope",), "train", tmp_path))
