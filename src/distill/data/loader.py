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

Transport (``device=`` with workers): each worker packs its chunk of a batch into one of
``prefetch_factor + 2`` shared-memory slots the main process mapped before the workers started,
and sends only where each tensor lies (see :class:`_SlotPool`). Those slots are shared memory held
for the loader's life: per worker, that many chunks of ``streams per worker x per-stream samples``
(about 2.2 MB per sample with five real-size int8 teachers).

Evaluation: one pass over the split; rank r takes shards r, r+W, ...; worker w of a rank takes
that rank's shards w, w+NW, ...; batches of ``eval_batch`` (the last one of each worker may
be short). Every key appears exactly once across ranks.
"""

from __future__ import annotations

import functools
import itertools
import logging
import multiprocessing
import os
import queue
import shutil
import threading
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from distill.data.dataset import (
    PACK_ALIGN,
    Allocator,
    Batch,
    DatasetView,
    DecodedSample,
    PackedBatch,
    PackedLayout,
    concat_batches,
    finish_parts,
    open_view,
)
from distill.data.join import iter_joined
from distill.data.manifest import ShardInfo
from distill.data.prefetch import prefetched
from distill.data.streams import StreamPlan, deal_streams, stream_items
from distill.lifeline import die_with_launcher
from distill.stats import FeatureStats

log = logging.getLogger(__name__)
_HOST_REGISTER_PORTABLE = 1  # cudaHostRegisterPortable: pinned for every CUDA context
SHARED_MEMORY = Path("/dev/shm")  # where torch's shared-memory tensors live on Linux
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
    # With ``device``: batches made up to this many ahead on a background thread (distill.data.prefetch;
    # 1: the next while the current one is used), so a GPU step does not wait for the main process's
    # share of loading; 0: made when asked for.
    device_prefetch: int = 1
    # Stats to normalise with instead of reading stats_dir (e.g. a finetune keeps its init student's).
    stats: Mapping[str, FeatureStats] | None = None


@dataclass
class _Chunk:
    """One worker's share of one batch: per-stream parts, tagged so the main process can verify order.

    From a worker with a :class:`_SlotPool`, ``parts`` is empty and ``layouts`` say where the parts
    lie in pool slot ``slot`` of worker ``worker``: no tensor crosses the process boundary.
    """

    batch_index: int
    streams: list[int]
    parts: list[Batch | PackedBatch]
    worker: int = 0
    slot: int | None = None
    layouts: list[PackedLayout] | None = None

    def pin_memory(self) -> _Chunk:
        if self.slot is not None:  # pinned by the main loop when it opens the slot
            return self
        return _Chunk(self.batch_index, self.streams, [part.pin_memory() for part in self.parts])


class _SlotPool:
    """Shared-memory buffers that loader workers pack batches into and the main process reads, reused.

    DataLoader sends every tensor a worker yields through a fresh shared-memory segment: a copy,
    and page faults on every page in the worker and again in the main process (about 1 ms per MB
    in benchmarks/loader_cores.py, against 0.1 for a copy into a slot already mapped; more than
    the worker's own work at 2.2 MB per sample). Instead, the main process maps ``slots`` buffers
    per worker before the workers start; a worker takes a free slot, packs its chunk into it and
    sends only the layout; the main process opens the layout over its own mapping of the same
    slot, copies out (to pinned memory or the device) and hands the slot back through a queue.
    A slot is never written while the main process reads it: a worker waits for the queue.
    A chunk that does not fit its slot is packed into fresh shared memory and sent as tensors
    (the slot goes back at once).
    """

    def __init__(self, workers: int, slots: int, nbytes: int) -> None:
        context = multiprocessing.get_context()  # the one DataLoader uses by default
        check_shared_memory(workers * slots * nbytes)
        self.nbytes = nbytes
        self.buffers = [[_shared_bytes(nbytes) for _ in range(slots)] for _ in range(workers)]
        self.free: list[Any] = [context.Queue() for _ in range(workers)]
        for free, buffers in zip(self.free, self.buffers, strict=True):
            for slot in range(len(buffers)):
                free.put(slot)
        self.parent = os.getpid()
        self.locked: list[int] = []  # data pointers of the slots registered with CUDA

    def take(self, worker: int) -> int:
        """A free slot of ``worker`` (waits while all are in use by the main process)."""
        while True:
            try:
                return int(self.free[worker].get(timeout=5.0))
            except queue.Empty:
                if os.getppid() != self.parent:
                    raise RuntimeError("the main process of this loader worker is gone") from None

    def give_back(self, worker: int, slot: int) -> None:
        self.free[worker].put(slot)

    def page_lock(self, device: torch.device) -> None:
        """Register every slot with CUDA (page-locked in place), so copies to the GPU are DMA straight
        from the slot instead of through a copy into pinned memory in this process (0.1 ms per MB,
        ~57 ms per batch of 256 samples of 2.2 MB: longer than the GPU step it feeds).

        Done on a thread of its own: a refused registration leaves a CUDA error behind in the calling
        thread, which PyTorch's next kernel-launch check there would raise. On refusal the slots stay
        pageable (copied through pinned memory) and a warning says so.
        """
        failures: list[str] = []

        def register() -> None:
            try:
                cudart = torch.cuda.cudart()
                for buffer in itertools.chain.from_iterable(self.buffers):
                    error = cudart.cudaHostRegister(
                        buffer.data_ptr(), buffer.numel(), _HOST_REGISTER_PORTABLE
                    )
                    if int(error) != 0:
                        failures.append(f"cudaError {int(error)}: {cudart.cudaGetErrorString(error)}")
                        return
                    self.locked.append(buffer.data_ptr())
            except Exception as exc:  # any failure leaves the slots pageable, with the warning
                failures.append(repr(exc))

        _on_own_thread(register, device)
        if failures:
            self.unlock(device)
            log.warning(
                "the loader's shared-memory slots could not be page-locked for CUDA (%s); batches go to the "
                "GPU through a copy into pinned memory instead, which may slow large batches",
                failures[0],
            )

    def unlock(self, device: torch.device) -> None:
        """Undo :meth:`page_lock` (before the slots are unmapped)."""
        if self.locked:
            cudart = torch.cuda.cudart()
            _on_own_thread(lambda: [cudart.cudaHostUnregister(ptr) for ptr in self.locked], device)
            self.locked = []


def check_shared_memory(nbytes: int, folder: Path = SHARED_MEMORY) -> None:
    """Refuse to start when ``folder`` (tmpfs) has less free space than the slots need: its pages are
    taken only when a worker first writes a slot, and a full tmpfs then kills that worker with SIGBUS
    ("DataLoader worker killed by signal: Bus error"), far from the cause."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:  # no such folder (not Linux): shared memory is not a tmpfs there
        return
    if free < nbytes:
        raise RuntimeError(
            f"the training loader's shared-memory slots need {nbytes / 1e9:.2f} GB in {folder}, which has "
            f"{free / 1e9:.2f} GB free; enlarge it (docker: --shm-size) or lower dataset.num_workers or "
            "training.batch_size"
        )


def _on_own_thread(work: Callable[[], object], device: torch.device) -> None:
    """``work`` on a short-lived thread with ``device`` current (a new thread's would be cuda:0, whose
    context every rank would then create)."""

    def run() -> None:
        with torch.cuda.device(device):
            work()

    thread = threading.Thread(target=run, name="distill-cuda-register")
    thread.start()
    thread.join()


def _shared_bytes(nbytes: int) -> torch.Tensor:
    """A fresh shared-memory buffer (1-D uint8): DataLoader sends tensors in it without copying them."""
    return torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(nbytes))


def _region_allocator(buffer: torch.Tensor) -> Allocator:
    """Consecutive aligned regions of ``buffer``, one per call; fresh shared memory once it is full."""
    used = [0]

    def allocate(nbytes: int) -> torch.Tensor:
        start = used[0]
        if start + nbytes > buffer.numel():
            return _shared_bytes(nbytes)
        used[0] = -(-(start + nbytes) // PACK_ALIGN) * PACK_ALIGN
        return buffer[start : start + nbytes]

    return allocate


def packed_bytes(view: DatasetView, samples: int) -> int:
    """Bytes :meth:`DatasetView.pack` takes for ``samples`` samples, with every tensor's alignment padding."""

    def padded(n: int) -> int:
        return -(-n // PACK_ALIGN) * PACK_ALIGN

    size = view.manifest.canonical_size
    total = padded(samples * 3 * size * size)
    for record in view.records.values():
        spec, (h, w) = record.spec, record.stored_grid
        itemsize = 1 if record.storage == "int8" else 2
        total += padded(samples * h * w * spec.channels * itemsize)
        if record.storage == "int8":
            total += padded(samples * 4 * spec.channels)
        if spec.cls_channels is not None:
            total += padded(samples * 2 * spec.cls_channels)
        if record.outlier_tokens:
            total += padded(samples * 8 * record.outlier_tokens)
            total += padded(samples * 2 * record.outlier_tokens * spec.channels)
    return total


def _read_shard(view: DatasetView, shard: ShardInfo, want: np.ndarray) -> Iterator[tuple[int, DecodedSample]]:
    for sample in iter_joined(
        view.path, shard.name, view.teachers, want=want, expected=shard.count, writable=True
    ):
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
        pool: _SlotPool | None = None,
    ) -> None:
        self.view, self.plans, self.per_stream, self.cfg, self.start_batch = (
            view,
            plans,
            per_stream,
            cfg,
            start_batch,
        )
        self.buffer, self.pool = buffer, pool

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
        indices = [plan.index for plan in mine]
        pool = self.pool if get_worker_info() is not None else None
        fits = pool is not None and packed_bytes(view, m) * len(streams) <= pool.nbytes
        for k in itertools.count(self.start_batch):
            if pool is None or not fits:
                parts = [_batch(view, list(itertools.islice(stream, m)), self.cfg) for stream in streams]
                yield _Chunk(k, indices, parts)
                continue
            slot = pool.take(worker)
            buffer = pool.buffers[worker][slot]
            samples = [list(itertools.islice(stream, m)) for stream in streams]
            allocate = _region_allocator(buffer)  # one for the slot: the streams' parts lie one after another
            packed = [view.pack(part, allocate) for part in samples]
            try:
                chunk = _Chunk(k, indices, [], worker, slot, [part.layout(buffer) for part in packed])
            except ValueError:  # blobs larger than the manifest says (e.g. a float32 CLS) overflowed the slot
                pool.give_back(worker, slot)
                chunk = _Chunk(k, indices, [view.pack(part, _shared_bytes) for part in samples])
            del samples, packed  # the shuffle buffers alone hold decoded samples while the chunk waits
            yield chunk


def _batch(view: DatasetView, samples: list[DecodedSample], cfg: LoaderConfig) -> Batch | PackedBatch:
    if cfg.device is None:
        return view.collate(samples)
    # in a worker, pack straight into shared memory (DataLoader would copy it there otherwise)
    return view.pack(samples, _shared_bytes if get_worker_info() is not None else None)


def _finish(part: Batch | PackedBatch, view: DatasetView, cfg: LoaderConfig) -> Batch:
    return part.finish(view.stats, cfg.device) if isinstance(part, PackedBatch) else part


def _assemble(
    chunks: list[_Chunk], order: dict[int, int], pool: _SlotPool | None, view: DatasetView, cfg: LoaderConfig
) -> Batch:
    """One batch from its workers' chunks, the streams' parts in plan order: concatenated when the
    workers finished them, else finished on ``cfg.device`` into new tensors. The pool slots the chunks
    came in go back to their workers once nothing reads them (page-locked slots: after one wait for
    all the batch's copies out of them)."""
    try:
        parts: list[Batch | PackedBatch | None] = [None] * len(order)
        for chunk in chunks:
            for stream, part in zip(chunk.streams, _parts(chunk, pool, cfg), strict=True):
                parts[order[stream]] = part
        batches = [part for part in parts if isinstance(part, Batch)]
        packed = [part for part in parts if isinstance(part, PackedBatch)]
        if len(batches) + len(packed) != len(parts) or (batches and packed):
            raise RuntimeError(
                f"batch {chunks[0].batch_index}: {parts.count(None)} stream part(s) missing, "
                f"{len(batches)} finished and {len(packed)} packed"
            )
        return concat_batches(batches) if batches else finish_parts(packed, view.stats, cfg.device or "cpu")
    finally:
        held = [(chunk.worker, chunk.slot) for chunk in chunks if chunk.slot is not None]
        if pool is not None and held:
            if pool.locked:  # the copies to the GPU read the slots themselves
                torch.cuda.current_stream(torch.device(cfg.device or "cuda")).synchronize()
            for worker, slot in held:
                pool.give_back(worker, slot)


def _parts(chunk: _Chunk, pool: _SlotPool | None, cfg: LoaderConfig) -> list[Batch | PackedBatch]:
    """The chunk's per-stream parts. From a pool slot: views over the slot's bytes, or, for a GPU,
    over one copy of the slot's used bytes there (the parts lie one after another in the slot: one
    copy per worker's chunk instead of one per tensor, ~16 per part with five teachers)."""
    if chunk.slot is None or chunk.layouts is None:
        return chunk.parts
    if pool is None:
        raise RuntimeError("a loader chunk in a shared slot arrived without its pool")
    region = pool.buffers[chunk.worker][chunk.slot][: max(layout.end for layout in chunk.layouts)]
    device = torch.device(cfg.device or "cpu")
    if device.type == "cuda":
        pinned = region if pool.locked or not cfg.pin_memory else region.pin_memory()
        region = pinned.to(device, non_blocking=True)
    return [layout.open(region) for layout in chunk.layouts]


class _EvalShards(IterableDataset[Batch | PackedBatch]):
    def __init__(self, view: DatasetView, shards: tuple[ShardInfo, ...], cfg: LoaderConfig) -> None:
        self.view, self.shards, self.cfg = view, shards, cfg

    def __iter__(self) -> Iterator[Batch | PackedBatch]:
        worker, workers = _worker_slot()
        pending: list[DecodedSample] = []
        for shard in self.shards[worker::workers]:
            for sample in iter_joined(
                self.view.path, shard.name, self.view.teachers, expected=shard.count, writable=True
            ):
                pending.append(self.view.decode(sample))
                if len(pending) == self.cfg.eval_batch:
                    yield _batch(self.view, pending, self.cfg)
                    pending = []
        if pending:
            yield _batch(self.view, pending, self.cfg)


def _worker_init(_: int) -> None:
    die_with_launcher()  # under torchrun: die with the rank that forked this worker (distill.lifeline)
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
) -> Generator[Batch, None, None]:
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
    pool = None
    if workers and cfg.device is not None:  # workers ship the stored dtype: through reused shared slots
        streams_per_worker = -(-len(mine) // workers)
        slot_bytes = streams_per_worker * packed_bytes(view, per_stream)
        pool = _SlotPool(workers, cfg.prefetch_factor + 2, slot_bytes)
    device = None if cfg.device is None else _resolved(torch.device(cfg.device))
    streams = _TrainStreams(view, mine, per_stream, cfg, start_batch, buffer, pool)
    loader = _data_loader(streams, cfg, workers)
    order = {plan.index: i for i, plan in enumerate(mine)}
    # started here: DataLoader watches for dead workers (SIGCHLD) only when started on the main thread
    chunks = iter(loader)
    if pool is not None and device is not None and device.type == "cuda":
        pool.page_lock(device)  # after the workers forked: they never inherit page-locked ranges

    def assembled(chunks: Iterator[_Chunk]) -> Iterator[Batch]:
        for k in itertools.count(start_batch):
            got = [next(chunks) for _ in range(max(workers, 1))]
            for chunk in got:
                if chunk.batch_index != k:
                    raise RuntimeError(
                        f"loader chunk for batch {chunk.batch_index} arrived while assembling batch {k}"
                    )
            yield _assemble(got, order, pool, view, cfg)

    try:
        if device is None or cfg.device_prefetch == 0:
            yield from assembled(chunks)
        else:
            yield from prefetched(
                functools.partial(assembled, chunks), cfg.device_prefetch, device, _used_on_this_stream
            )
    finally:
        del chunks
        if pool is not None and device is not None:
            pool.unlock(device)


def _resolved(device: torch.device) -> torch.device:
    """``cuda`` as the device current in this thread (a new thread's current device is cuda:0)."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _used_on_this_stream(batch: Batch) -> None:
    """Tensors the prefetch thread made on its stream, used on the consumer's: the caching allocator
    must not reuse their memory for the prefetch stream before the consumer's work on them is done."""
    if batch.images.device.type != "cuda":
        return
    stream = torch.cuda.current_stream(batch.images.device)
    for out in batch.targets.values():
        for tensor in (out.patch, out.cls):
            if tensor is not None:
                tensor.record_stream(stream)
    batch.images.record_stream(stream)


def eval_batches(cfg: LoaderConfig, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
    """One pass over ``cfg.eval_split``: this rank's shards (r, r+W, ...), every key once across ranks."""
    if cfg.eval_batch < 1:
        raise ValueError(f"eval_batch must be >= 1, got {cfg.eval_batch}")
    view = open_view(cfg.dataset, cfg.eval_split, cfg.teachers, cfg.stats_dir, cfg.normalize, cfg.stats)
    shards = view.shards[rank::world_size]
    workers = min(cfg.num_workers, len(shards))
    for part in _data_loader(_EvalShards(view, shards, cfg), cfg, workers):
        yield _finish(part, view, cfg)
