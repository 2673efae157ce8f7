"""The training and evaluation loaders (contract in docs/architecture.md, "Data").

Training: the split's shards are dealt into ``num_streams`` streams; stream s is an endless,
seeded sequence (:mod:`distill.data.streams`). Global batch k is, for every stream s in order,
its samples ``[k*m, (k+1)*m)`` with ``m = global_batch // num_streams``. Rank r owns streams
r, r+W, ... and yields its part; DataLoader workers each own some of the rank's streams
(dealt round-robin) and send one chunk per batch, which the main process puts back in stream
order. So batch k's samples do not depend on ranks or workers, and resuming at batch k reads
only the shards still needed.

Memory: a stream holds up to ``shuffle_buffer`` decoded samples it has read but not yet served,
so a rank holds up to ``streams per rank x shuffle_buffer`` of them (32 x 1000 samples of ~2.2 MB,
~70 GB, with five real-size int8 teachers). ``max_buffer_bytes`` bounds that per rank: the
buffer of every stream becomes ``max_buffer_bytes / (streams per rank x bytes per sample)`` when
that is smaller (bytes per sample computed from the manifest: decoded image plus stored
features). A smaller buffer mixes less within a stream; the streams still interleave in every
batch and each epoch permutes its shards. When the bound binds, the shuffle depends on the
number of streams per rank (so on the world size).

Evaluation: one pass over the split; rank r takes shards r, r+W, ...; worker w of a rank takes
that rank's shards w, w+NW, ...; batches of ``eval_batch`` (the last one of each worker may
be short). Every key appears exactly once across ranks.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from distill.data.dataset import Batch, DatasetView, DecodedSample, PackedBatch, concat_batches, open_view
from distill.data.join import iter_joined
from distill.data.manifest import ShardInfo
from distill.data.streams import StreamPlan, deal_streams, stream_items
from distill.stats import FeatureStats

log = logging.getLogger(__name__)
SKEW_WARNING = 1.05  # warn when streams differ in size by more than 5%
SAMPLE_OVERHEAD = 2048  # Python objects, tensor headers and metadata of one decoded sample


@dataclass(frozen=True)
class LoaderConfig:
    """Everything the loaders need; the trainer builds this from its dataset config."""

    dataset: Path  # <root>/<dataset>, the folder holding manifest.json
    teachers: tuple[str, ...]  # teachers whose features become targets (may be empty)
    stats_dir: Path | None = None  # None: <dataset>/feature_stats (read when normalize and teachers)
    normalize: bool = True
    split: str = "train"
    global_batch: int = 32  # samples per optimizer step across all ranks
    num_streams: int = 8  # must be a multiple of the world size and divide global_batch
    seed: int = 0
    shuffle_buffer: int = 512  # samples held per stream for shuffling (at most; see max_buffer_bytes)
    max_buffer_bytes: int | None = None  # per rank, decoded samples held by all its shuffle buffers
    num_workers: int = 0  # DataLoader workers per rank (each owns some of the rank's streams)
    eval_split: str = "val"
    eval_batch: int = 32  # per rank
    pin_memory: bool = False
    prefetch_factor: int = 2
    # Where targets are dequantised and normalised. None: in the loader workers (float32 on CPU).
    # A device ("cuda", "cuda:1"): workers ship the stored dtype (int8 is a quarter of float32) and
    # the loader finishes the batch on that device; images are moved there too.
    device: str | None = None
    # Stats to normalise with instead of reading stats_dir (e.g. a finetune keeps its init student's).
    stats: Mapping[str, FeatureStats] | None = None


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


def sample_bytes(view: DatasetView) -> int:
    """Resident bytes of one decoded sample: its uint8 image and each teacher's stored tensors."""
    size = view.manifest.canonical_size
    total = 3 * size * size + SAMPLE_OVERHEAD
    for record in view.records.values():
        spec, (h, w) = record.spec, record.stored_grid
        itemsize = 1 if record.storage == "int8" else 2
        total += h * w * spec.channels * itemsize
        if record.storage == "int8":
            total += 4 * spec.channels
        if spec.cls_channels is not None:
            total += 2 * spec.cls_channels
        total += record.outlier_tokens * (2 * spec.channels + 8)
    return total


def stream_buffer(cfg: LoaderConfig, view: DatasetView, streams_per_rank: int) -> int:
    """The shuffle buffer of each stream: ``shuffle_buffer``, lowered to fit ``max_buffer_bytes``."""
    if cfg.max_buffer_bytes is None:
        return cfg.shuffle_buffer
    fits = cfg.max_buffer_bytes // (streams_per_rank * sample_bytes(view))
    return max(1, min(cfg.shuffle_buffer, int(fits)))


def stream_skew(plans: list[StreamPlan]) -> float:
    """How much more often a sample of the smallest stream is seen than one of the largest.

    Every stream serves the same number of samples per batch, so a sample is seen in proportion
    to 1 / its stream's size.
    """
    sizes = [plan.size for plan in plans]
    return max(sizes) / min(sizes)


class _TrainStreams(IterableDataset[_Chunk]):
    def __init__(
        self,
        view: DatasetView,
        plans: list[StreamPlan],
        per_stream: int,
        cfg: LoaderConfig,
        start_batch: int,
        buffer: int,
    ) -> None:
        self.view, self.plans, self.per_stream, self.cfg, self.start_batch = (
            view,
            plans,
            per_stream,
            cfg,
            start_batch,
        )
        self.buffer = buffer

    def __iter__(self) -> Iterator[_Chunk]:
        worker, workers = _worker_slot()
        mine = self.plans[worker::workers]
        m, view = self.per_stream, self.view
        streams = [
            stream_items(
                plan,
                self.cfg.seed,
                self.buffer,
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
    view = open_view(cfg.dataset, cfg.split, cfg.teachers, cfg.stats_dir, cfg.normalize, cfg.stats)
    plans = deal_streams(view.shards, cfg.num_streams)
    mine = rank_streams(cfg, plans, rank, world_size)
    per_stream = cfg.global_batch // cfg.num_streams
    workers = cfg.num_workers
    buffer = stream_buffer(cfg, view, len(mine))
    if rank == 0:
        skew = stream_skew(plans)
        if skew > SKEW_WARNING:
            sizes = sorted(plan.size for plan in plans)
            log.warning(
                "%s: the %d streams hold %d to %d samples, so a sample of the smallest stream is seen %.2fx as "
                "often as one of the largest; use a dataset.num_streams that divides the %d shards evenly, or "
                "shards of equal size",
                cfg.dataset,
                len(plans),
                sizes[0],
                sizes[-1],
                skew,
                len(view.shards),
            )
        if buffer < cfg.shuffle_buffer:
            log.info(
                "shuffle buffer %d samples per stream (not %d): %d stream(s) x %.2f MB per decoded sample fit in "
                "max_buffer_bytes=%.2f GB per rank",
                buffer,
                cfg.shuffle_buffer,
                len(mine),
                sample_bytes(view) / 1e6,
                (cfg.max_buffer_bytes or 0) / 1e9,
            )
    loader = _data_loader(_TrainStreams(view, mine, per_stream, cfg, start_batch, buffer), cfg, workers)
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
    view = open_view(cfg.dataset, cfg.eval_split, cfg.teachers, cfg.stats_dir, cfg.normalize, cfg.stats)
    shards = view.shards[rank::world_size]
    workers = min(cfg.num_workers, len(shards))
    for part in _data_loader(_EvalShards(view, shards, cfg), cfg, workers):
        yield _finish(part, view, cfg)
