"""Stream arithmetic: the buffer shuffle bound, dealing, and resuming without reading skipped data."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from distill.data.manifest import ShardInfo
from distill.data.streams import (
    StreamPlan,
    buffer_shuffle_order,
    deal_streams,
    emit_in_order,
    epoch_plan,
    stream_items,
)


def test_buffer_shuffle_is_a_bounded_permutation() -> None:
    for n, buffer in ((1, 4), (10, 1), (10, 4), (100, 16), (7, 50)):
        order = buffer_shuffle_order(n, buffer, np.random.default_rng(n))
        assert sorted(order.tolist()) == list(range(n))
        assert all(int(order[j]) <= j + buffer for j in range(n))
    assert buffer_shuffle_order(10, 1, np.random.default_rng(0)).tolist() == list(range(10))
    assert buffer_shuffle_order(50, 8, np.random.default_rng(0)).tolist() != list(range(50))


def test_deal_streams() -> None:
    shards = tuple(ShardInfo(f"s{i}", 3) for i in range(5))
    plans = deal_streams(shards, 2)
    assert [[s.name for s in p.shards] for p in plans] == [["s0", "s2", "s4"], ["s1", "s3"]]
    assert [p.size for p in plans] == [9, 6]
    with pytest.raises(ValueError, match="fewer than num_streams=6"):
        deal_streams(shards, 6)


class Recorder:
    """A read_shard that serves (shard, ordinal) labels and records what was opened and read."""

    def __init__(self) -> None:
        self.opened: list[str] = []
        self.read = 0

    def __call__(self, shard: ShardInfo, want: np.ndarray) -> Iterator[tuple[int, str]]:
        self.opened.append(shard.name)
        assert len(want) == shard.count
        for ordinal in range(shard.count):
            if want[ordinal]:
                self.read += 1
                yield ordinal, f"{shard.name}:{ordinal}"


def test_resume_skips_whole_shards_and_unwanted_samples() -> None:
    plan = StreamPlan(0, tuple(ShardInfo(f"s{i}", 10) for i in range(6)))
    epoch = epoch_plan(plan, seed=1, epoch=0, buffer=4)
    full = list(emit_in_order(epoch, 0, Recorder()))
    assert sorted(full) == sorted(f"s{i}:{j}" for i in range(6) for j in range(10))
    recorder = Recorder()
    resumed = list(emit_in_order(epoch, 35, recorder))
    assert resumed == full[35:]
    assert recorder.read == 60 - 35  # skipped samples are never read
    assert (
        len(recorder.opened) <= 4
    )  # the first three shards of the epoch hold only emitted samples (buffer 4)
    assert epoch.shards[0].name not in recorder.opened


def test_endless_stream_crosses_epochs_like_a_fresh_start() -> None:
    plan = StreamPlan(1, (ShardInfo("a", 4), ShardInfo("b", 3)))
    straight = [item for _, item in zip(range(30), stream_items(plan, 0, 3, 0, Recorder()), strict=False)]
    assert sorted(straight[:7]) == sorted(straight[7:14])  # each epoch is every sample once
    assert straight[:7] != straight[7:14] or straight[7:14] != straight[14:21]
    resumed = [item for _, item in zip(range(18), stream_items(plan, 0, 3, 12, Recorder()), strict=False)]
    assert resumed == straight[12:30]
