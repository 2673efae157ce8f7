"""Deterministic sample streams: which sample comes at which position, computed without reading.

A stream owns a fixed list of shards. Epoch ``e`` of stream ``s`` permutes its shards and then
passes the samples through a shuffle buffer, both driven by ``numpy.random.default_rng([seed, s, e])``.
The buffer shuffle is simulated on sample positions, so the whole epoch's output order is known
up front: resuming at any position reads only the shards (and samples) still needed, and the
stream is the same whether it ran from the start or resumed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from distill.data.manifest import ShardInfo

T = TypeVar("T")


@dataclass(frozen=True)
class StreamPlan:
    index: int
    shards: tuple[ShardInfo, ...]

    @property
    def size(self) -> int:
        return sum(shard.count for shard in self.shards)


def deal_streams(shards: tuple[ShardInfo, ...], num_streams: int) -> list[StreamPlan]:
    """Stream s gets shards s, s + N, s + 2N, ...; every stream must get at least one sample."""
    if num_streams < 1:
        raise ValueError(f"num_streams must be >= 1, got {num_streams}")
    if len(shards) < num_streams:
        raise ValueError(
            f"the split has {len(shards)} shards, fewer than num_streams={num_streams}; "
            "lower num_streams or rebuild with fewer samples per shard"
        )
    plans = [StreamPlan(s, shards[s::num_streams]) for s in range(num_streams)]
    empty = [plan.index for plan in plans if plan.size == 0]
    if empty:
        raise ValueError(f"streams {empty} have no samples (their shards are empty); lower num_streams")
    return plans


def buffer_shuffle_order(n: int, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """Output order of a size-``buffer`` shuffle buffer over inputs 0..n-1 (as webdataset's shuffle).

    Output ``j`` is an input at position <= ``j + buffer``, so a reader holds at most ``buffer``
    samples it has read but not yet emitted.
    """
    if buffer <= 1 or n <= 1:
        return np.arange(n, dtype=np.int64)
    fill = min(buffer, n)
    slots = list(range(fill))
    picks = rng.integers(0, fill, size=n - fill).tolist()
    out = np.empty(n, dtype=np.int64)
    for i in range(fill, n):
        j = picks[i - fill]
        out[i - fill] = slots[j]
        slots[j] = i
    out[n - fill :] = np.asarray(slots, dtype=np.int64)[rng.permutation(fill)]
    return out


@dataclass(frozen=True)
class EpochPlan:
    shards: tuple[ShardInfo, ...]  # in this epoch's order
    starts: tuple[int, ...]  # position of each shard's first sample in the epoch input
    order: np.ndarray  # order[j] = input position of output j


def epoch_plan(plan: StreamPlan, seed: int, epoch: int, buffer: int) -> EpochPlan:
    rng = np.random.default_rng([seed, plan.index, epoch])
    shards = tuple(plan.shards[i] for i in rng.permutation(len(plan.shards)))
    starts = tuple(int(v) for v in np.cumsum([0, *(s.count for s in shards[:-1])]))
    return EpochPlan(shards, starts, buffer_shuffle_order(plan.size, buffer, rng))


def emit_in_order(
    epoch: EpochPlan,
    offset: int,
    read_shard: Callable[[ShardInfo, np.ndarray], Iterator[tuple[int, T]]],
) -> Iterator[T]:
    """Items at outputs ``offset``, ``offset + 1``, ... of the epoch.

    ``read_shard(shard, want)`` yields ``(ordinal, item)`` for the ordinals where ``want`` is True,
    in order. Shards with nothing wanted are never opened.
    """
    total = int(epoch.order.shape[0])
    needed = np.zeros(total, dtype=bool)
    needed[epoch.order[offset:]] = True

    def read_all() -> Iterator[tuple[int, T]]:
        for shard, start in zip(epoch.shards, epoch.starts, strict=True):
            want = needed[start : start + shard.count]
            if want.any():
                for ordinal, item in read_shard(shard, want):
                    yield start + ordinal, item

    reader = read_all()
    pending: dict[int, T] = {}
    for j in range(offset, total):
        position = int(epoch.order[j])
        while position not in pending:
            got = next(reader, None)
            if got is None:
                raise RuntimeError(
                    f"stream ran out before input position {position}: a shard holds fewer samples than the manifest says"
                )
            pending[got[0]] = got[1]
        yield pending.pop(position)


def stream_items(
    plan: StreamPlan,
    seed: int,
    buffer: int,
    start: int,
    read_shard: Callable[[ShardInfo, np.ndarray], Iterator[tuple[int, T]]],
) -> Iterator[T]:
    """The endless stream from position ``start`` (epoch ``start // size``, offset ``start % size``)."""
    epoch, offset = divmod(start, plan.size)
    while True:
        yield from emit_in_order(epoch_plan(plan, seed, epoch, buffer), offset, read_shard)
        epoch, offset = epoch + 1, 0
