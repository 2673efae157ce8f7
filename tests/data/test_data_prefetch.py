"""Batches made ahead on a thread: the same items in order, errors in place, bounded, stopped on close."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
import torch
from data_helpers import FIVE, Built

from distill.data.loader import LoaderConfig, train_batches
from distill.data.prefetch import prefetched


def _prefetch_threads() -> int:
    return sum(thread.name == "distill-prefetch" for thread in threading.enumerate())


def test_items_come_in_order_and_an_error_after_the_items_before_it() -> None:
    assert list(prefetched(lambda: iter(range(50)), 1)) == list(range(50))

    def failing() -> Iterator[int]:
        yield from range(3)
        raise ValueError("shard 7 is truncated")

    got: list[int] = []
    with pytest.raises(ValueError, match="shard 7 is truncated"):
        for item in prefetched(failing, 2):
            got.append(item)
    assert got == [0, 1, 2]
    with pytest.raises(ValueError, match="depth must be >= 1"):
        next(prefetched(lambda: iter(range(3)), 0))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where CUDA cannot start")
def test_a_thread_that_cannot_start_its_device_raises_rather_than_hangs() -> None:
    """The thread's CUDA stream fails to start here (no GPU): the consumer gets that very error."""
    with pytest.raises((RuntimeError, AssertionError)) as caught:
        next(prefetched(lambda: iter(range(3)), 1, torch.device("cuda", 0)))
    assert "prefetch thread stopped" not in str(caught.value)  # CUDA's own words, not the fallback
    assert _prefetch_threads() == 0


def test_the_source_runs_ahead_by_depth_and_no_further() -> None:
    """One item taken, depth 2: two more are made (one waiting, one made while it waits), no third."""
    made: list[int] = []

    def counted() -> Iterator[int]:
        for i in itertools.count():
            made.append(i)
            yield i

    stream = prefetched(counted, 2)
    assert next(stream) == 0
    deadline = time.monotonic() + 5.0
    while len(made) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # time enough to overrun the bound if it were not kept
    assert len(made) == 3
    assert next(stream) == 1
    time.sleep(0.3)
    assert len(made) == 4  # taking one frees one place
    stream.close()


def test_on_consumer_runs_on_each_item_in_the_consumers_thread() -> None:
    seen: list[tuple[int, str]] = []
    items = list(
        prefetched(
            lambda: iter(range(5)), 1, on_consumer=lambda i: seen.append((i, threading.current_thread().name))
        )
    )
    assert items == list(range(5))
    assert seen == [(i, threading.current_thread().name) for i in range(5)]


def test_closing_stops_the_thread_and_closes_the_source() -> None:
    closed = threading.Event()

    def endless() -> Iterator[int]:
        try:
            yield from itertools.count()
        finally:
            closed.set()

    before = _prefetch_threads()
    stream = prefetched(endless, 1)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    assert _prefetch_threads() == before + 1
    stream.close()
    assert closed.is_set() and _prefetch_threads() == before


def test_the_loader_serves_the_same_batches_made_ahead_or_when_asked(built: Built) -> None:
    """device=...: batches assembled on the prefetch thread equal those assembled in the caller's."""
    base = LoaderConfig(
        built.dataset,
        FIVE,
        built.stats_dir,
        global_batch=4,
        num_streams=2,
        seed=3,
        shuffle_buffer=5,
        device="cpu",
    )
    for workers in (0, 2):
        cfg = replace(base, num_workers=workers)
        ahead = list(itertools.islice(train_batches(cfg), 6))
        asked = list(itertools.islice(train_batches(replace(cfg, device_prefetch=0)), 6))
        for a, b in zip(ahead, asked, strict=True):
            assert a.keys == b.keys and torch.equal(a.images, b.images)
            for name in FIVE:
                assert torch.equal(a.targets[name].patch, b.targets[name].patch)
    assert _prefetch_threads() == 0
