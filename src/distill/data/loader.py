"""The training and evaluation loaders (contract in docs/architecture.md, "Data").

Training: the split's shards are dealt into ``num_streams`` streams; stream s is an endless,
seeded sequence (:mod:`distill.data.streams`). Global batch k is, for every stream s in order,
its samples ``[k*m, (k+1)*m)`` with ``m = global_batch // num_streams``. Rank r owns streams
r, r+W, ... and yields its part; DataLoader workers each own some of the rank's streams
(dealt round-robin) and send one chunk per batch, which the main process puts back in stream
order. So batch k's samples do not depend on ranks or workers, and resuming at batch k reads
only the shards still needed.

Evaluation: one pass over the split; rank r takes shards r, r+W, ...; worker w of a rank takes
that rank's shards w, w+NW, ...; batches of ``eval_batch`` (the last one of each worker may
be short). Every key appears exactly once across ranks.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from distill.data.dataset import Batch, DatasetView, DecodedSample, PackedBatch, concat_batches, open_view
from distill.data.join import iter_joined
from distill.data.manifest import ShardInfo
from distill.data.streams import StreamPlan, deal_streams, stream_items


@dataclass(frozen=True)
class LoaderConfig:
    """Everything the loaders need; the trainer builds this from its dataset config."""

    dataset: Path  # <root>/<dataset>, the folder holding manifest.json
    teachers: tuple[str, ...]  # teachers whose features become targets (may be empty)
    stats_dir: Path | None = None  # feature_stats/ folder; required when normalize and teachers
    normalize: bool = True
    split: str = "train"
    global_batch: int = 32  # samples per optimizer step across all ranks
    num_streams: int = 8  # must be a multiple of the world size and divide global_batch
    seed: int = 0
    shuffle_buffer: int = 512  # samples held per stream for shuffling
    num_workers: int = 0  # DataLoader workers per rank (each owns some of the rank's streams)
    eval_split: str = "val"
    eval_batch: int = 32  # per rank
    pin_memory: bool = False
    prefetch_factor: int = 2
    # Where targets are dequantised and normalised. None: in the loader workers (float32 on CPU).
    # A device ("cuda", "cuda:1"): workers ship the stored dtype (int8 is a quarter of float32) and
    # the loader finishes the batch on that device; images are moved there too.
    device: str | None = None


@dataclass
class _Chunk:
    """One worker's share of one batch: per-stream parts, tagged so the main process can verify order."""

    batch_index: int
    streams: list[int]
    parts: list[Batch | PackedBatch]

    def pin_memory(self) -> _Chunk:
        return _Chunk(self.batch_index, self.streams, [part.pin_memory() for part in self.parts])


def _read_shard(view: DatasetView, shard: ShardInfo, want: np.ndarray) -> Iterator[tuple[int, DecodedSample]]:
    for sample in iter_joined(view.path, shard.name, view.teachers, want=want, expected=shard.count):
        yield sample.ordinal, view.decode(sample)


def _worker_slot() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class _TrainStreams(IterableDataset[_Chunk]):
    def __init__(
        self, view: DatasetView, plans: list[StreamPlan], per_stream: int, cfg: LoaderConfig, start_batch: int
    ) -> None:
        self.view, self.plans, self.per_stream, self.cfg, self.start_batch = (
            view,
            plans,
            per_stream,
            cfg,
            start_batch,
        )

    def __iter__(self) -> Iterator[_Chunk]:
        worker, workers = _worker_slot()
        mine = self.plans[worker::workers]
        m, view = self.per_stream, self.view
        streams = [
            stream_items(
                plan,
                self.cfg.seed,
                self.cfg.shuffle_buffer,
                self.start_batch * m,
                lambda s, w: _read_shard(view, s, w),
            )
            for plan in mine
        ]
        for k in itertools.count(self.start_batch):
            parts = [_batch(view, list(itertools.islice(stream, m)), self.cfg) for stream in streams]
            yield _Chunk(k, [plan.index for plan in mine], parts)


def _batch(view: DatasetView, samples: list[DecodedSample], cfg: LoaderConfig) -> Batch | PackedBatch:
    return view.pack(samples) if cfg.device is not None else view.collate(samples)


def _finish(part: Batch | PackedBatch, view: DatasetView, cfg: LoaderConfig) -> Batch:
    return part.finish(view.stats, cfg.device) if isinstance(part, PackedBatch) else part


class _EvalShards(IterableDataset[Batch | PackedBatch]):
    def __init__(self, view: DatasetView, shards: tuple[ShardInfo, ...], cfg: LoaderConfig) -> None:
        self.view, self.shards, self.cfg = view, shards, cfg

    def __iter__(self) -> Iterator[Batch | PackedBatch]:
        worker, workers = _worker_slot()
        pending: list[DecodedSample] = []
        for shard in self.shards[worker::workers]:
            for sample in iter_joined(self.view.path, shard.name, self.view.teachers, expected=shard.count):
                pending.append(self.view.decode(sample))
                if len(pending) == self.cfg.eval_batch:
                    yield _batch(self.view, pending, self.cfg)
                    pending = []
        if pending:
            yield _batch(self.view, pending, self.cfg)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding and normalising are per-sample; leave the cores to the other workers


def _data_loader(
    dataset: IterableDataset[_Chunk] | IterableDataset[Batch | PackedBatch], cfg: LoaderConfig, workers: int
) -> DataLoader:
    if workers == 0:
        return DataLoader(dataset, batch_size=None, pin_memory=cfg.pin_memory)
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        pin_memory=cfg.pin_memory,
        prefetch_factor=cfg.prefetch_factor,
        worker_init_fn=_worker_init,
    )


def rank_streams(cfg: LoaderConfig, plans: list[StreamPlan], rank: int, world_size: int) -> list[StreamPlan]:
    """Streams r, r+W, ... of the dealt streams, after checking the batch geometry."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    if cfg.num_streams % world_size:
        raise ValueError(
            f"num_streams={cfg.num_streams} must be a multiple of the world size {world_size} (equal batches per rank)"
        )
    if cfg.global_batch % cfg.num_streams:
        raise ValueError(
            f"global_batch={cfg.global_batch} must be a multiple of num_streams={cfg.num_streams}"
        )
    mine = plans[rank::world_size]
    if cfg.num_workers > len(mine):
        raise ValueError(
            f"num_workers={cfg.num_workers} exceeds the {len(mine)} streams of each rank; raise num_streams or lower num_workers"
        )
    return mine


def train_batches(
    cfg: LoaderConfig, rank: int = 0, world_size: int = 1, start_batch: int = 0
) -> Iterator[Batch]:
    """Endless training batches of this rank, from global batch ``start_batch`` on.

    Each batch holds ``global_batch // world_size`` samples: ``m = global_batch // num_streams``
    from each of this rank's streams, in stream order.
    """
    if start_batch < 0:
        raise ValueError(f"start_batch must be >= 0, got {start_batch}")
    view = open_view(cfg.dataset, cfg.split, cfg.teachers, cfg.stats_dir, cfg.normalize)
    mine = rank_streams(cfg, deal_streams(view.shards, cfg.num_streams), rank, world_size)
    per_stream = cfg.global_batch // cfg.num_streams
    workers = cfg.num_workers
    loader = _data_loader(_TrainStreams(view, mine, per_stream, cfg, start_batch), cfg, workers)
    order = {plan.index: i for i, plan in enumerate(mine)}
    chunks = iter(loader)
    try:
        for k in itertools.count(start_batch):
            got = [next(chunks) for _ in range(max(workers, 1))]
            parts: list[Batch | None] = [None] * len(mine)
            for chunk in got:
                if chunk.batch_index != k:
                    raise RuntimeError(
                        f"loader chunk for batch {chunk.batch_index} arrived while assembling batch {k}"
                    )
                for stream, part in zip(chunk.streams, chunk.parts, strict=True):
                    parts[order[stream]] = _finish(part, view, cfg)
            if any(part is None for part in parts):
                raise RuntimeError(f"batch {k}: a stream's part is missing")
            yield concat_batches([part for part in parts if part is not None])
    finally:
        del chunks


def eval_batches(cfg: LoaderConfig, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
    """One pass over ``cfg.eval_split``: this rank's shards (r, r+W, ...), every key once across ranks."""
    if cfg.eval_batch < 1:
        raise ValueError(f"eval_batch must be >= 1, got {cfg.eval_batch}")
    view = open_view(cfg.dataset, cfg.eval_split, cfg.teachers, cfg.stats_dir, cfg.normalize)
    shards = view.shards[rank::world_size]
    workers = min(cfg.num_workers, len(shards))
    for part in _data_loader(_EvalShards(view, shards, cfg), cfg, workers):
        yield _finish(part, view, cfg)
