"""An iterator run ahead on a background thread: its host work overlaps the consumer's.

Extraction decodes the next images while the teachers run. The training loader, on GPU, makes the
next batch while the step runs: the step ends in a synchronisation (the finite-loss and gradient
checks read values back), so whatever the loader did after it in the step's thread (taking the
workers' chunks, copying them to the device, dequantising) left the GPU idle. The copies and kernel
launches release the GIL, and the step's thread waits on the device with the GIL released.

On CUDA the thread works on its own stream (created for ``device``), so the copies to the device and
the dequantising kernels run beside the step's kernels rather than queued behind them; each item is
complete on the device when the consumer gets it (the thread synchronises its stream first).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

T = TypeVar("T")
_POLL_S = 0.1  # how often a producer waiting for a place looks whether the consumer has gone


@dataclass
class _Done:
    """The source is exhausted."""


@dataclass
class _Failed:
    """The source raised; the consumer raises the same exception at the same position."""

    error: BaseException


@dataclass
class _Item(Generic[T]):
    value: T


@contextlib.contextmanager
def _device_context(device: torch.device | None) -> Iterator[None]:
    """On CUDA: ``device`` current in this thread, with a stream of its own; elsewhere nothing."""
    if device is None or device.type != "cuda":
        yield
        return
    with torch.cuda.device(device), torch.cuda.stream(torch.cuda.Stream(device)):
        yield


def prefetched(
    source: Callable[[], Iterator[T]],
    depth: int,
    device: torch.device | None = None,
    on_consumer: Callable[[T], None] | None = None,
) -> Iterator[T]:
    """The items of ``source()``, made on a background thread at most ``depth`` ahead of the consumer
    (counting the one being made: with ``depth=1`` the next item is made while the current one is used).

    ``source`` is called on the thread (so a CUDA stream it sees is the thread's own); its items come
    in order, and an exception it raises is raised here after the items before it. Closing this
    generator stops the thread and closes the source's iterator there. ``on_consumer`` runs on each
    item in the consumer's thread before it is yielded (e.g. ``Tensor.record_stream``).
    """
    if depth < 1:
        raise ValueError(f"prefetch depth must be >= 1, got {depth}")
    ready: queue.Queue[_Item[T] | _Done | _Failed] = queue.Queue()  # bounded by the permits
    permits = threading.Semaphore(depth)  # one per item made and not yet taken by the consumer
    stop = threading.Event()
    on_cuda = device is not None and device.type == "cuda"

    def permitted() -> bool:
        """Wait for a place ahead of the consumer; False once the consumer has gone."""
        while not stop.is_set():
            if permits.acquire(timeout=_POLL_S):
                return True
        return False

    def produce() -> None:
        # the source's iterator is a local of this frame: returning closes it, on this thread
        try:
            with _device_context(device):
                items = source()
                while permitted():
                    try:
                        item = next(items)
                    except StopIteration:
                        break
                    if on_cuda:
                        torch.cuda.current_stream(device).synchronize()  # complete before it is handed over
                    ready.put(_Item(item))
            ready.put(_Done())
        except BaseException as error:  # handed to the consumer, which raises it
            ready.put(_Failed(error))

    thread = threading.Thread(target=produce, name="distill-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            entry = ready.get()  # the thread always ends with _Done or _Failed
            if isinstance(entry, _Done):
                return
            if isinstance(entry, _Failed):
                raise entry.error
            permits.release()
            if on_consumer is not None:
                on_consumer(entry.value)
            yield entry.value
    finally:
        stop.set()
        thread.join()
