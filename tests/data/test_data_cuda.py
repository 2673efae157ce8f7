"""The loader's CUDA path, on a GPU machine (skipped elsewhere): page-locked slots, the prefetch
stream, dequantising on the GPU. Run there with ``pytest tests/data/test_data_cuda.py``.

The CPU stand-in (device="cpu") runs the same thread and slots in the suite; what only a GPU can show
is that the copies out of a page-locked slot are done before the slot is reused, and that a batch made
on the prefetch stream is complete when the consumer's stream reads it.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from data_helpers import FIVE, JOBS, Built, loader_config

from distill.data.dataset import Batch
from distill.data.loader import eval_batches, train_batches
from distill.data.prefetch import prefetched
from distill.distributed import DistContext
from distill.preprocess.extract import ExtractConfig, run_extraction
from distill.teachers import Teacher

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (a GPU machine)")


def _assert_matches(on_gpu: Batch, on_cpu: Batch) -> None:
    """Same keys and pixels exactly; targets dequantised and normalised on the GPU to float rounding."""
    assert on_gpu.keys == on_cpu.keys
    assert on_gpu.images.device.type == "cuda"
    assert torch.equal(on_gpu.images.cpu(), on_cpu.images)
    for name in FIVE:
        got, want = on_gpu.targets[name], on_cpu.targets[name]
        assert got.patch.device.type == "cuda" and got.patch.dtype == torch.float32
        torch.testing.assert_close(got.patch.cpu(), want.patch)
        if want.cls is not None:
            assert got.cls is not None
            torch.testing.assert_close(got.cls.cpu(), want.cls)


@pytest.mark.parametrize("prefetch", [0, 1, 2])
@pytest.mark.parametrize(("streams", "workers"), [(1, 1), (2, 2), (2, 1)])
def test_page_locked_slots_serve_the_cpu_batches(
    built: Built, streams: int, workers: int, prefetch: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Ten batches held at once reuse every slot twice over (prefetch_factor + 2 per worker): a slot
    handed back before its copies to the GPU were done would show a later batch's values here."""
    caplog.set_level(logging.WARNING)
    cfg = loader_config(built, num_streams=streams, num_workers=workers)
    held = list(itertools.islice(train_batches(replace(cfg, device="cuda", device_prefetch=prefetch)), 10))
    torch.cuda.synchronize()
    assert "page-locked" not in caplog.text  # the registration worked: no fallback to pinned copies
    reference = list(itertools.islice(train_batches(cfg), 10))
    for on_gpu, on_cpu in zip(held, reference, strict=True):
        _assert_matches(on_gpu, on_cpu)


def test_eval_batches_on_cuda_match_the_cpu(built: Built) -> None:
    cfg = loader_config(built, num_workers=2)
    on_gpu = list(eval_batches(replace(cfg, device="cuda")))
    on_cpu = list(eval_batches(cfg))
    assert len(on_gpu) == len(on_cpu) > 0
    for a, b in zip(on_gpu, on_cpu, strict=True):
        _assert_matches(a, b)


def test_prefetched_batches_are_complete_when_served() -> None:
    """Each item is made on the prefetch stream behind a long GPU sleep; the consumer reads it at once
    on its own stream. Without the stream synchronisation before the hand-over it would read zeros."""
    device = torch.device("cuda", torch.cuda.current_device())

    def made() -> Iterator[torch.Tensor]:
        for k in range(4):
            out = torch.zeros(1 << 20, device=device)
            torch.cuda._sleep(50_000_000)  # ~25 ms of GPU time on this stream before the fill
            yield out.fill_(k + 1)

    served = prefetched(made, 1, device, lambda t: t.record_stream(torch.cuda.current_stream(device)))
    for k, tensor in enumerate(served):
        assert float(tensor.min()) == float(tensor.max()) == k + 1


def test_extraction_on_cuda_stores_what_the_cpu_stored(
    built: Built, dataset_copy: Path, tiny_teachers: dict[str, Teacher]
) -> None:
    """The decode thread pins each batch and the loop copies it once, asynchronously: a pinned block
    reused before its copy ended would store another batch's features. In fp32 the GPU's features
    match the CPU's to float rounding, so the int8 codes agree but for the odd rounding flip."""
    on_gpu = {name: copy.deepcopy(teacher).to("cuda") for name, teacher in tiny_teachers.items()}
    cfg = ExtractConfig(dataset_copy, JOBS, batch_size=4, precision="fp32", overwrite=True, progress=False)
    report = run_extraction(cfg, on_gpu, DistContext())
    assert report.samples > 0
    ours = loader_config(built, dataset=dataset_copy, num_workers=0)
    pairs = zip(
        itertools.islice(train_batches(ours), 4),
        itertools.islice(train_batches(loader_config(built)), 4),
        strict=True,
    )
    for got, want in pairs:
        assert got.keys == want.keys and torch.equal(got.images, want.images)
        for name in FIVE:
            difference = (got.targets[name].patch - want.targets[name].patch).abs()
            assert float(difference.max()) < 0.1, name  # one int8 step, in normalised units
            assert float(difference.mean()) < 1e-3, name  # almost every code the same
