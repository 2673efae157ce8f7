"""The training loader contract: deterministic streams, ranks and workers, exact resume, normalisation."""

from __future__ import annotations

import io
import itertools
import logging
import shutil
import tarfile
import weakref
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from data_helpers import FIVE, Built, loader_config
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from distill.data.codec import decode_sample, parse_sample
from distill.data.dataset import Batch, DatasetView, DecodedSample, concat_batches, open_view
from distill.data.loader import (
    LoaderConfig,
    check_shared_memory,
    eval_batches,
    sample_bytes,
    stream_buffer,
    train_batches,
)
from distill.data.manifest import load_manifest
from distill.data.shards import iter_shard, list_keys, split_member
from distill.stats import FeatureStats


def _take(cfg: LoaderConfig, n: int, rank: int = 0, world: int = 1, start: int = 0) -> list[Batch]:
    return list(itertools.islice(train_batches(cfg, rank, world, start), n))


def _by_key(batch: Batch) -> dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    return {
        key: (batch.images[i], {name: out.patch[i] for name, out in batch.targets.items()})
        for i, key in enumerate(batch.keys)
    }


def _assert_same(a: Batch, b: Batch) -> None:
    assert a.keys == b.keys
    assert torch.equal(a.images, b.images)
    for name in a.targets:
        assert torch.equal(a.targets[name].patch, b.targets[name].patch)
        if a.targets[name].cls is not None:
            assert torch.equal(a.targets[name].cls, b.targets[name].cls)  # type: ignore[arg-type]


def test_one_rank_2b_equals_the_union_of_two_ranks_b(built: Built) -> None:
    single = _take(loader_config(built), 20)
    rank0, rank1 = _take(loader_config(built), 20, 0, 2), _take(loader_config(built), 20, 1, 2)
    for whole, a, b in zip(single, rank0, rank1, strict=True):
        assert len(whole) == 4 and len(a) == len(b) == 2
        _assert_same(whole, concat_batches([a, b]))


def test_workers_and_ranks_serve_the_same_global_batches(built: Built) -> None:
    cfg = loader_config(built, num_streams=4, global_batch=8)
    reference = _take(cfg, 9)
    with_workers = _take(replace(cfg, num_workers=2), 9)
    for a, b in zip(reference, with_workers, strict=True):
        _assert_same(a, b)
    ranks = [_take(replace(cfg, num_workers=2), 9, r, 2) for r in range(2)]
    for whole, *parts in zip(reference, *ranks, strict=True):
        merged = _by_key(parts[0]) | _by_key(parts[1])
        assert sorted(merged) == sorted(whole.keys) and len(parts[0]) == len(parts[1]) == 4
        for key, (image, targets) in _by_key(whole).items():
            assert torch.equal(merged[key][0], image)
            assert all(torch.equal(merged[key][1][n], targets[n]) for n in FIVE)


@pytest.mark.parametrize("workers", [0, 2])
def test_start_batch_resumes_exactly(built: Built, workers: int) -> None:
    cfg = loader_config(built, num_workers=workers)
    straight = _take(cfg, 16)
    for k in (1, 6, 9):  # 6 and 9 cross stream epoch boundaries (stream sizes 16 and 12, 2 per batch)
        for a, b in zip(straight[k:], _take(cfg, 16 - k, start=k), strict=True):
            _assert_same(a, b)


def test_each_stream_serves_each_of_its_keys_once_per_epoch(built: Built) -> None:
    shards = load_manifest(built.dataset).splits["train"].shards
    stream_keys = [
        sorted(k for s in shards[i::2] for k in list_keys(built.dataset / "images" / s.name))
        for i in range(2)
    ]
    assert [len(k) for k in stream_keys] == [16, 12]
    batches = _take(loader_config(built), 16)
    assert sorted(k for b in batches[:8] for k in b.keys[:2]) == stream_keys[0]
    assert sorted(k for b in batches[:6] for k in b.keys[2:]) == stream_keys[1]
    assert (
        sorted(k for b in batches[6:12] for k in b.keys[2:]) == stream_keys[1]
    )  # the next epoch, reshuffled
    assert [k for b in batches[:6] for k in b.keys[2:]] != [k for b in batches[6:12] for k in b.keys[2:]]
    assert [b.keys for b in _take(loader_config(built, seed=4), 6)] != [b.keys for b in batches[:6]]


def test_targets_are_the_stored_features_normalised_with_the_stats(built: Built) -> None:
    batch = _take(loader_config(built), 1)[0]
    assert batch.images.dtype == torch.uint8 and batch.images.shape == (4, 3, 64, 64)
    specs = {name: record.target_spec for name, record in load_manifest(built.dataset).teachers.items()}
    raw: dict[str, dict[str, torch.Tensor]] = {n: {} for n in FIVE}
    for shard in load_manifest(built.dataset).splits["train"].shards:
        for name in FIVE:
            for sample in iter_shard(built.dataset / name / shard.name):
                if sample.key in batch.keys:
                    raw[name][sample.key] = decode_sample(
                        sample.files[f"{name}.safetensors"], sample.key
                    ).patch
    for name in FIVE:
        stats = FeatureStats.load(built.stats_dir / f"{name}.safetensors")
        out = batch.targets[name]
        spec = specs[name]
        assert out.patch.dtype == torch.float32 and out.patch.shape == (4, *spec.grid, spec.channels)
        assert (out.cls is None) == (spec.cls_channels is None)
        expected = torch.stack([(raw[name][k] - stats.patch_mean) / stats.patch_std for k in batch.keys])
        torch.testing.assert_close(out.patch, expected)
    assert specs["sam"].grid == (4, 4)


def test_eval_serves_each_key_once_across_ranks(built: Built) -> None:
    cfg = loader_config(built, eval_batch=4, num_workers=2)
    val_keys = sorted(
        k
        for s in load_manifest(built.dataset).splits["val"].shards
        for k in list_keys(built.dataset / "images" / s.name)
    )
    seen = [k for rank in range(2) for b in eval_batches(cfg, rank, 2) for k in b.keys]
    assert sorted(seen) == val_keys and len(seen) == 8
    assert [len(b) for b in eval_batches(cfg, 0, 2)] == [
        4,
        2,
    ]  # rank 0: val shard 0 (6 samples), last batch short
    assert [len(b) for b in eval_batches(cfg, 1, 2)] == [2]  # rank 1: val shard 1
    assert [len(b) for b in eval_batches(replace(cfg, num_workers=0), 0, 1)] == [4, 4]  # batches span shards


def test_bad_geometry_is_refused_with_the_fix(built: Built, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of the world size"):
        next(train_batches(loader_config(built, num_streams=3, global_batch=6), 0, 2))
    with pytest.raises(ValueError, match="global_batch=5 must be a multiple of num_streams=2"):
        next(train_batches(loader_config(built, global_batch=5)))
    with pytest.raises(ValueError, match="num_workers=3 exceeds the 2 streams"):
        next(train_batches(loader_config(built, num_workers=3)))
    with pytest.raises(ValueError, match="fewer than num_streams=6"):
        next(train_batches(loader_config(built, num_streams=6, global_batch=6)))
    # no stats_dir: the dataset's own feature_stats/ folder, which this dataset does not have
    with pytest.raises(FileNotFoundError, match=r"ds/feature_stats/\w+\.safetensors"):
        next(train_batches(loader_config(built, stats_dir=None)))
    assert next(train_batches(loader_config(built, teachers=(), stats_dir=None))).targets == {}


def test_finishing_on_a_device_serves_the_same_batches(built: Built) -> None:
    """device=...: workers ship the stored dtype and the loader dequantises + normalises there."""
    reference = _take(loader_config(built, num_workers=2), 4)
    for a, b in zip(reference, _take(loader_config(built, num_workers=2, device="cpu"), 4), strict=True):
        assert a.keys == b.keys and torch.equal(a.images, b.images)
        for name in FIVE:
            torch.testing.assert_close(a.targets[name].patch, b.targets[name].patch, rtol=0, atol=0)
    evaluated = list(eval_batches(loader_config(built, device="cpu")))
    assert sum(len(b) for b in evaluated) == 8 and evaluated[0].targets["clip"].patch.dtype == torch.float32


def _peak_held(cfg: LoaderConfig, batches: int, monkeypatch: pytest.MonkeyPatch) -> int:
    """The most decoded samples alive at once while the loader serves ``batches`` batches (in process)."""
    alive = [0, 0]  # now, peak
    original = DatasetView.decode

    def counted(self: DatasetView, sample: Any) -> DecodedSample:
        decoded = original(self, sample)
        alive[0] += 1
        alive[1] = max(alive)
        weakref.finalize(decoded, lambda: alive.__setitem__(0, alive[0] - 1))
        return decoded

    monkeypatch.setattr(DatasetView, "decode", counted)
    for batch in itertools.islice(train_batches(cfg), batches):
        del batch
    monkeypatch.setattr(DatasetView, "decode", original)
    return alive[1]


def test_max_buffer_bytes_bounds_the_decoded_samples_held(
    built: Built, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Unbounded, a 1000-sample buffer holds each stream's whole epoch; bounded to 3 samples per stream
    (bytes per sample from the manifest), at most 2 x 3 wait in the buffers besides the batch being built."""
    view = open_view(built.dataset, "train", FIVE, built.stats_dir)
    per_sample = sample_bytes(view)
    image = 3 * 64 * 64
    features = 4 * 4 * 32 + 4 * 32 + 2 * 32  # clip int8 grid, scales, fp16 CLS (tiny teachers: 32 wide)
    assert per_sample > image + features
    wide = loader_config(built, shuffle_buffer=1000)
    tight = replace(wide, max_buffer_bytes=2 * 3 * per_sample + 1)
    assert stream_buffer(wide, view, 2) == 1000 and stream_buffer(tight, view, 2) == 3
    assert stream_buffer(replace(wide, max_buffer_bytes=1), view, 2) == 1  # never below one
    unbounded = _peak_held(wide, 7, monkeypatch)
    with caplog.at_level(logging.INFO, logger="distill.data.loader"):
        bounded = _peak_held(tight, 7, monkeypatch)
    assert unbounded >= 20, unbounded  # 16 + 12 samples in the two streams
    assert bounded <= 2 * 3 + wide.global_batch, bounded
    assert "shuffle buffer 3 samples per stream (not 1000)" in caplog.text
    # streams of 16 and 12 samples: a sample of the small one is seen 16/12 times as often
    assert "hold 12 to 16 samples, so a sample of the smallest stream is seen 1.33x as often" in caplog.text
    # a bound that does not bind changes nothing
    big = replace(wide, max_buffer_bytes=10**12)
    assert [b.keys for b in _take(big, 8)] == [b.keys for b in _take(wide, 8)]


def _tarfile_members(path: Path, ext: str) -> dict[str, bytes]:
    """key -> the bytes of its ``<key>.<ext>`` member, as tarfile itself reads the shard."""
    with tarfile.open(path) as archive:
        return {
            split_member(m.name, path)[0]: archive.extractfile(m).read()  # type: ignore[union-attr]
            for m in archive
            if split_member(m.name, path)[1] == ext
        }


def _old_way(built: Built) -> Callable[[list[str]], Batch]:
    """What the loader served before its shared-memory slots: tar members read by tarfile, every
    tensor parsed by the safetensors library (a copy), images decoded contiguous by Pillow, then
    stacked and finished on the CPU."""
    from distill.data.dataset import PackedBatch, PackedTargets

    view = open_view(built.dataset, "train", FIVE, built.stats_dir)
    images: dict[str, torch.Tensor] = {}
    stored: dict[str, dict[str, Any]] = {name: {} for name in FIVE}
    for shard in view.shards:
        for key, jpeg in _tarfile_members(built.dataset / "images" / shard.name, "jpg").items():
            with Image.open(io.BytesIO(jpeg)) as image:
                images[key] = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
        for name in FIVE:
            blobs = _tarfile_members(built.dataset / name / shard.name, f"{name}.safetensors")
            stored[name].update({key: parse_sample(blob, key) for key, blob in blobs.items()})

    def batch(keys: list[str]) -> Batch:
        targets = {}
        for name in FIVE:
            rows = [stored[name][k] for k in keys]
            scale = torch.stack([r.scale for r in rows]) if rows[0].scale is not None else None
            cls = torch.stack([r.cls for r in rows]) if rows[0].cls is not None else None
            targets[name] = PackedTargets(torch.stack([r.patch for r in rows]), scale, cls)
        return PackedBatch(keys, torch.stack([images[k] for k in keys]), targets).finish(view.stats, "cpu")

    return batch


def test_shared_slots_serve_exactly_the_batches_of_the_old_path(built: Built) -> None:
    """device=...: workers pack into reused shared-memory slots (prefetch_factor + 2 per worker) and
    send layouts. Ten batches reuse every slot twice over; every batch, including the ones held
    since the start, equals the batch built the old way, exactly. One stream and one worker: the
    batch is the worker's part itself (no concatenation copies it), so CPU images that still
    pointed into a reused slot would show the later batch's pixels. Two streams in one worker: their
    parts share a slot, one after the other."""
    old_way = _old_way(built)
    for streams, workers in ((1, 1), (2, 2), (2, 1)):
        held = _take(loader_config(built, num_streams=streams, num_workers=workers, device="cpu"), 10)
        assert all(len(b) == 4 for b in held)
        for batch in held:
            _assert_same(batch, old_way(batch.keys))
        # the same batches as in-process (no workers, no slots) and as finished in the workers
        in_process = _take(loader_config(built, num_streams=streams, device="cpu"), 10)
        in_workers = _take(loader_config(built, num_streams=streams, num_workers=workers), 10)
        for a, b, c in zip(held, in_process, in_workers, strict=True):
            _assert_same(a, b)
            _assert_same(a, c)


def test_packed_layout_reopens_the_same_tensors(built: Built) -> None:
    """What a worker sends instead of tensors: offsets, dtypes and shapes in one buffer."""
    from distill.data.dataset import PACK_ALIGN
    from distill.data.join import iter_joined
    from distill.data.loader import packed_bytes

    view = open_view(built.dataset, "train", FIVE, built.stats_dir)
    shard = view.shards[0]
    samples = [view.decode(s) for s in iter_joined(view.path, shard.name, FIVE, writable=True)][:3]
    size = packed_bytes(view, 3)
    buffer = torch.zeros(size + 5, dtype=torch.uint8)
    packed = view.pack(samples, lambda n: buffer[:n])
    assert packed.images.data_ptr() == buffer.data_ptr()
    layout = packed.layout(buffer)
    assert all(p is None or p.offset % PACK_ALIGN == 0 for p in layout.places)
    copy = buffer.clone()
    again = layout.open(copy)
    fresh = view.pack(samples)
    for a, b, c in zip(packed.tensors(), again.tensors(), fresh.tensors(), strict=True):
        assert (a is None) == (b is None) == (c is None)
        if a is not None and b is not None and c is not None:
            assert a.dtype == b.dtype == c.dtype and torch.equal(a, b) and torch.equal(a, c)
            assert b.data_ptr() != a.data_ptr()
    with pytest.raises(ValueError, match="not a contiguous view of the buffer"):
        packed.layout(copy)


def test_too_little_shared_memory_is_refused_before_a_worker_dies_of_it(tmp_path: Path) -> None:
    """The slots' tmpfs pages are taken when first written: a full one would SIGBUS a worker mid-run."""
    free = shutil.disk_usage(tmp_path).free
    check_shared_memory(1, tmp_path)
    with pytest.raises(
        RuntimeError, match=rf"need [0-9.]+ GB in {tmp_path}, which has [0-9.]+ GB free; enlarge it"
    ):
        check_shared_memory(free + 2**40, tmp_path)
    check_shared_memory(2**60, tmp_path / "absent")  # no such folder: not a tmpfs platform, nothing to check


def test_parts_are_joined_as_they_are_finished(built: Built) -> None:
    """A batch's per-stream parts are joined as they are dequantised: each teacher's features as the
    codec dequantises them, normalised by its stats, in new tensors (none over a part's reusable
    buffer), with as many operations called for 5 parts as for 2 (the loader's prefetch thread calls
    them beside the training step). Parts may store the CLS in different dtypes; parts whose shapes or
    row counts disagree are refused (an ``out=`` of the wrong size would be resized, not refused)."""
    from distill.data.dataset import PackedBatch, finish_parts
    from distill.data.join import iter_joined

    view = open_view(built.dataset, "train", FIVE, built.stats_dir)
    joined = list(iter_joined(view.path, view.shards[0].name, FIVE, writable=True))[:5]
    samples = [view.decode(s) for s in joined]
    parts = [view.pack(samples[:3]), view.pack(samples[3:4]), view.pack(samples[4:])]
    wide = parts[1].targets["clip"]
    assert wide.cls is not None and wide.cls.dtype != torch.float32
    parts[1].targets["clip"] = replace(wide, cls=wide.cls.float())  # a float32 CLS in one part
    whole = finish_parts(parts, view.stats, "cpu")
    assert whole.keys == [s.key for s in samples]
    for name in FIVE:
        stats, stored = view.stats[name], [parse_sample(s.features[name], s.key) for s in joined]
        raw = [blob.dequantize() for blob in stored]
        patch = (torch.stack([r.patch for r in raw]) - stats.patch_mean) / stats.patch_std
        torch.testing.assert_close(whole.targets[name].patch, patch)
        if raw[0].cls is not None:
            cls = (torch.stack([r.cls for r in raw]) - stats.cls_mean) / stats.cls_std  # type: ignore[misc,operator]
            torch.testing.assert_close(whole.targets[name].cls, cls)
    owned = {t.untyped_storage().data_ptr() for part in parts for t in part.tensors() if t is not None}
    served = [
        whole.images,
        *(t for out in whole.targets.values() for t in (out.patch, out.cls) if t is not None),
    ]
    assert not owned & {t.untyped_storage().data_ptr() for t in served}
    singles = [view.pack(samples[i : i + 1]) for i in range(5)]
    calls = [_operations(lambda n=n: finish_parts(singles[:n], view.stats, "cpu")) for n in (2, 5)]  # type: ignore[misc]
    assert calls[0] == calls[1], f"finishing calls operations per part: {calls} for 2 and 5 parts"
    sam = parts[1].targets["sam"]
    for bad in (replace(sam, patch=sam.patch[:, :1]), replace(sam, patch=torch.cat([sam.patch, sam.patch]))):
        broken = PackedBatch(parts[1].keys, parts[1].images, {**parts[1].targets, "sam": bad})
        with pytest.raises(ValueError, match=r"batch parts disagree: keys \['.+'\]\.\.\. \(1 keys"):
            finish_parts([parts[0], broken], view.stats, "cpu")


def _operations(work: Callable[[], object]) -> int:
    """How many operations that are not views ``work`` dispatches."""
    count = [0]

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            count[0] += not func.is_view
            return func(*args, **(kwargs or {}))

    with Count():
        work()
    return count[0]
