"""Feature shards written on one thread behind the extraction's forward loop.

The forward loop hands each batch's features to :class:`FeatureWriter` and goes on to the next
batch: quantising, encoding, writing and, at the end of an image shard, verifying, fsyncing and
renaming its feature shards all happen on the writer thread, in the order submitted. Finishing a
shard on the forward loop made it wait, at every shard boundary, for the writer to drain and for
one fsync per teacher, with the GPU idle all the while; with small shards (video episodes, the GPU
benchmark's 16 images) that was a stall every batch or two. The loop waits only when the writer is
``ahead`` batches behind, which bounds the features held in memory.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import torch

from distill.data.codec import area_downsample, encode_batch
from distill.data.manifest import ShardInfo, TeacherRecord
from distill.data.shards import ShardError, write_shard
from distill.features import TeacherOutput

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardTask:
    shard: ShardInfo
    pending: tuple[str, ...]  # teachers whose feature shard must be (re)written


@dataclass(frozen=True)
class _Handoff:
    """A batch's features passing to the writer thread on a GPU: the writer's own stream, and an event
    recorded on the forward passes' stream once they made the batch's features.

    The writer's checks and copies back to the host each wait for their stream. On the forward passes'
    stream that meant every kernel queued before them, the next batch's forward passes too; the
    forward loop, which waits for the writer two batches back, then found the GPU idle each time it
    resumed. On its own stream, waiting for the event first, the writer waits for its batch alone.
    """

    stream: torch.cuda.Stream
    made: torch.cuda.Event


@contextmanager
def _on_writer_stream(handoff: _Handoff | None, outputs: dict[str, TeacherOutput]) -> Iterator[None]:
    if handoff is None:
        yield
        return
    handoff.stream.wait_event(handoff.made)
    for out in outputs.values():
        for tensor in (out.patch, out.cls):
            if tensor is not None and tensor.device == handoff.stream.device:
                tensor.record_stream(handoff.stream)  # made on the forward stream, read on this one
    with torch.cuda.stream(handoff.stream):
        yield


class OpenShard:
    """The feature shards being written for one image shard (one per pending teacher).

    Opened on the forward loop; written to and finished on the writer thread only.
    """

    def __init__(self, dataset: Path, images: Path, task: ShardTask) -> None:
        self.task, self.image_path = task, images / task.shard.name
        with ExitStack() as opening:  # a sink that fails to open closes those opened before it
            self.sinks = {
                name: opening.enter_context(write_shard(dataset / name / task.shard.name))
                for name in task.pending
            }
            self.stack = opening.pop_all()
        self.keys: list[str] = []
        self.writes: list[Future[None]] = []

    def write(
        self,
        records: dict[str, TeacherRecord],
        keys: list[str],
        outputs: dict[str, TeacherOutput],
        handoff: _Handoff | None,
    ) -> None:
        with torch.inference_mode(), _on_writer_stream(handoff, outputs):
            for name, out in outputs.items():
                record = records[name]
                patch = area_downsample(out.patch, record.stored_grid)
                blobs = encode_batch(keys, name, patch, out.cls, record.storage, record.outlier_tokens)
                for key, blob in zip(keys, blobs, strict=True):
                    self.sinks[name].write(key, {f"{name}.safetensors": blob})

    def finish(self) -> list[Path]:
        """Verify the keys and rename the shards into place (after this shard's writes, which must
        all have succeeded)."""
        for future in self.writes:  # done: the writer's one thread ran them before this job
            future.result()
        if len(self.keys) != self.task.shard.count:
            raise ShardError(
                f"{self.image_path}: {len(self.keys)} samples but the manifest says {self.task.shard.count}; "
                "rebuild the dataset with organize",
                self.image_path,
            )
        for sink in self.sinks.values():
            if sink.keys != self.keys:
                raise ShardError(
                    f"{sink.path}: wrote {len(sink.keys)} keys for {len(self.keys)} samples; rerun to redo it",
                    sink.path,
                )
        self.stack.close()
        return [sink.path for sink in self.sinks.values()]

    def abort(self, exc: BaseException) -> None:
        """Drop the unfinished shards (their temporary files go; nothing appears under a final name)."""
        self.stack.__exit__(type(exc), exc, exc.__traceback__)


class FeatureWriter:
    """Writes and finishes feature shards on one thread, in submission order, at most ``ahead``
    batches behind the caller; a context manager that, on an error, stops and removes every shard
    not yet finished.

    ``written`` lists the finished shards' paths as the caller collects them (:meth:`collect`).
    """

    def __init__(self, records: dict[str, TeacherRecord], device: torch.device, ahead: int = 2) -> None:
        self.records, self.ahead = records, ahead
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="feature-writer")
        self.batches: deque[Future[None]] = deque()
        self.finishing: deque[tuple[OpenShard, Future[list[Path]]]] = deque()
        self.unfinished: list[OpenShard] = []
        self.written: list[Path] = []
        self.shards_written = 0

    def open(self, dataset: Path, images: Path, task: ShardTask) -> OpenShard:
        shard = OpenShard(dataset, images, task)
        self.unfinished.append(shard)
        return shard

    def write(self, shard: OpenShard, keys: list[str], outputs: dict[str, TeacherOutput]) -> None:
        """Queue one batch's features; waits first while ``ahead`` batches are still being written."""
        while len(self.batches) >= self.ahead:
            self.batches.popleft().result()
        handoff = None
        if self.stream is not None:
            made = torch.cuda.current_stream(self.stream.device).record_event()
            handoff = _Handoff(self.stream, made)
        shard.keys += keys
        future = self.executor.submit(shard.write, self.records, keys, outputs, handoff)
        shard.writes.append(future)
        self.batches.append(future)
        self.collect()

    def finish(self, shard: OpenShard) -> None:
        """Queue the shard's verification and rename, after its writes; returns without waiting."""
        self.finishing.append((shard, self.executor.submit(shard.finish)))

    def collect(self, wait: bool = False) -> None:
        """Take in the shards finished so far (all of them, waiting, with ``wait``); raises a
        writer-thread error here, on the caller's thread."""
        while self.finishing and (wait or self.finishing[0][1].done()):
            shard, future = self.finishing.popleft()
            self.written += future.result()
            self.shards_written += 1
            self.unfinished.remove(shard)

    def __enter__(self) -> FeatureWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            self._stop(exc)
            return
        try:
            self.collect(wait=True)
        except BaseException as error:
            self._stop(error)
            raise
        self.executor.shutdown()

    def _stop(self, exc: BaseException) -> None:
        """Let the running job end, drop the queued ones, and remove every unfinished shard's
        temporary files (a shard already renamed into place is complete and stays)."""
        self.executor.shutdown(wait=True, cancel_futures=True)
        for shard in self.unfinished:
            try:
                shard.abort(exc)
            except Exception as error:  # the rest still go; the run's own error is the one raised
                log.warning(
                    "could not remove the unfinished feature shards of %s: %s", shard.image_path, error
                )
        self.unfinished.clear()
