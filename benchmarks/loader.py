"""Training loader throughput vs the same batches already in memory (target: >= 95%, see the README benchmark table).

Two datasets: (1) the five tiny teachers' int8 features extracted from synthetic scenes, and
(2) the same images with synthetic int8 features at the teachers' *real* output sizes (written
through the same codec), where dequantising and normalising ~2.2 M values per sample dominates.

For each: raw loader samples/s for 0, 1 and 2 DataLoader workers (and with 2 workers shipping the
stored dtype, finished by the main process: ``LoaderConfig.device``); samples/s of iterating the same
batches from a list in memory; and steps/s with an emulated accelerator step (``--step-ms`` of
sleep per batch, during which the CPU is free, as when the student runs on a GPU) with the real
loader vs with the in-memory batches, both warmed up and timed interleaved ``--repeats`` times
(median and range in ``step_timing``). That last ratio is the one the target is about. The same
comparison for the GPU path (one worker shipping the stored dtype, the batch finished by the main
process) with the batch made when asked for and made ahead on the prefetch thread
(``LoaderConfig.device_prefetch`` 0 and 1).

Memory: the peak RSS of a process that runs the training loader over one epoch of real-size
features (five teachers, int8, full SAM grid) with a shuffle buffer larger than a stream, once
unbounded and once with ``max_buffer_bytes`` (``dataset.max_buffer_gb``), each in a fresh process.

    python benchmarks/loader.py --output benchmarks/results/loader.json
"""

from __future__ import annotations

import functools
import itertools
import json
import multiprocessing
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import FIVE, base_parser, machine, paired_ratio, synthetic_dataset, write_result
from distill.data.codec import encode_batch
from distill.data.dataset import Batch, open_view
from distill.data.loader import LoaderConfig, sample_bytes, stream_buffer, train_batches
from distill.data.manifest import TeacherRecord, load_manifest, update_manifest
from distill.data.shards import list_keys, write_shard
from distill.distributed import DistContext
from distill.features import TeacherSpec
from distill.preprocess.calc_stats import StatsConfig, compute_stats
from distill.preprocess.extract import ExtractConfig, TeacherJob, run_extraction
from distill.teachers import load_teacher
from storage import REAL_SIZES


def add_real_size_features(dataset: Path) -> None:
    """Synthetic int8 features at real teacher sizes for every image shard, recorded in the manifest."""
    rng = np.random.default_rng(0)
    manifest = load_manifest(dataset)
    records = {}
    for name, (grid, channels, cls_channels) in REAL_SIZES.items():
        spec = TeacherSpec(name, 224, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), grid, channels, cls_channels)
        records[name] = TeacherRecord(spec, "int8", grid, "synthetic", None, "fp32", tuple(manifest.splits))
        for info in manifest.splits.values():
            for shard in info.shards:
                keys = list_keys(dataset / "images" / shard.name)
                with write_shard(dataset / name / shard.name) as sink:
                    for start in range(0, len(keys), 16):
                        chunk = keys[start : start + 16]
                        patch = torch.from_numpy(
                            rng.standard_normal((len(chunk), *grid, channels), dtype=np.float32)
                        )
                        cls = (
                            None
                            if cls_channels is None
                            else torch.from_numpy(
                                rng.standard_normal((len(chunk), cls_channels), dtype=np.float32)
                            )
                        )
                        for key, blob in zip(
                            chunk, encode_batch(chunk, name, patch, cls, "int8"), strict=True
                        ):
                            sink.write(key, {f"{name}.safetensors": blob})
    update_manifest(dataset, lambda m: replace(m, teachers=records))


def timed(batches: Iterator[Batch], count: int, step_s: float) -> float:
    next(batches)  # start-up (workers, first shards) is not throughput
    start = time.perf_counter()
    for batch in itertools.islice(batches, count):
        batch.images[:, :, 0, 0].sum()  # touch the data
        if step_s:
            time.sleep(step_s)
    return time.perf_counter() - start


def run(cfg: LoaderConfig, count: int, step_ms: float, repeats: int) -> dict[str, Any]:
    samples = count * cfg.global_batch
    out: dict[str, Any] = {}
    for workers in (0, 1, 2):
        seconds = timed(train_batches(replace(cfg, num_workers=workers)), count, 0.0)
        out[f"loader_samples_per_s_workers_{workers}"] = round(samples / seconds, 1)
    seconds = timed(train_batches(replace(cfg, num_workers=2, device="cpu")), count, 0.0)
    out["loader_samples_per_s_workers_2_stored_dtype_shipped"] = round(samples / seconds, 1)
    memory = list(itertools.islice(train_batches(cfg), count + 1))
    out["memory_samples_per_s"] = round(samples / timed(iter(memory), count, 0.0), 1)
    step_s = step_ms / 1e3
    stream = train_batches(replace(cfg, num_workers=2))  # one loader, warmed up, as in training

    def steps(batches: Callable[[], Iterator[Batch]]) -> Callable[[], None]:
        def go() -> None:
            for batch in itertools.islice(batches(), count):
                batch.images[:, :, 0, 0].sum()
                time.sleep(step_s)

        return go

    fed = paired_ratio(steps(lambda: iter(memory[1:])), steps(lambda: stream), repeats)
    out["emulated_step_ms"] = step_ms
    out["steps_per_s_loader_workers_2"] = round(count / fed["candidate_seconds"]["median"], 2)
    out["steps_per_s_memory"] = round(count / fed["reference_seconds"]["median"], 2)
    out["step_ratio"] = fed["ratio"]["median"]
    out["step_timing"] = fed
    # The GPU path: one worker ships the stored dtype through its shared slots and the main process
    # finishes the batch (here on the CPU, a heavier stand-in for the copy and kernels a GPU needs),
    # when asked for (device_prefetch=0) or on the prefetch thread while the step runs.
    shipped = replace(cfg, num_workers=1, device="cpu")
    for depth in (0, 1):
        made = train_batches(replace(shipped, device_prefetch=depth))
        fed = paired_ratio(steps(lambda: iter(memory[1:])), steps(functools.partial(iter, made)), repeats)
        out[f"step_ratio_stored_dtype_1_worker_prefetch_{depth}"] = fed["ratio"]["median"]
        out[f"step_timing_stored_dtype_1_worker_prefetch_{depth}"] = fed
        made.close()
    return out


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _rss_child(cfg: LoaderConfig, batches: int, queue: Any) -> None:
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    before, anon_before = _status_kib("VmRSS"), _status_kib("RssAnon")  # the interpreter with torch imported
    anon_peak = anon_before
    for batch in itertools.islice(train_batches(cfg), batches):
        del batch
        anon_peak = max(anon_peak, _status_kib("RssAnon"))
    queue.put((before, _status_kib("VmHWM"), anon_before, anon_peak))


def peak_rss_mb(cfg: LoaderConfig, batches: int) -> dict[str, float]:
    """Peak RSS of a fresh process serving ``batches`` batches (num_workers=0: one process holds it all).

    Linux only: the peak is /proc/self/status VmHWM, reset before the loader starts. RSS counts the
    pages of the feature shards the loader maps (page cache, reclaimable); ``anon`` is the process's
    own memory (RssAnon, sampled after every batch), which the shuffle-buffer bound is about.
    """
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_rss_child, args=(cfg, batches, queue))
    child.start()
    before, peak, anon_before, anon_peak = queue.get()
    child.join()
    return {
        "rss_before_loader_mb": round(before / 1024, 1),
        "peak_rss_mb": round(peak / 1024, 1),
        "loader_peak_mb": round((peak - before) / 1024, 1),
        "loader_peak_anon_mb": round((anon_peak - anon_before) / 1024, 1),
    }


def memory(root: Path, images: int, size: int, streams: int, bound_gb: float) -> dict[str, Any]:
    """Peak RSS over one epoch of real-size features, buffer larger than a stream: unbounded vs bounded."""
    real = synthetic_dataset(root / "memory", images, size, 50)
    add_real_size_features(real)
    compute_stats(StatsConfig(real, FIVE, "train", root / "stats_memory"))
    cfg = LoaderConfig(real, FIVE, root / "stats_memory", global_batch=2 * streams, num_streams=streams)
    cfg = replace(cfg, shuffle_buffer=10 * images)
    view = open_view(real, "train", FIVE, root / "stats_memory")
    per_sample = sample_bytes(view)
    batches = images // cfg.global_batch
    bounded = replace(cfg, max_buffer_bytes=int(bound_gb * 1e9))
    return {
        "images": images,
        "num_streams": streams,
        "bytes_per_decoded_sample": per_sample,
        "batches": batches,
        "unbounded": {
            "shuffle_buffer_per_stream": stream_buffer(cfg, view, streams),
            **peak_rss_mb(cfg, batches),
        },
        f"max_buffer_gb_{bound_gb}": {
            "shuffle_buffer_per_stream": stream_buffer(bounded, view, streams),
            **peak_rss_mb(bounded, batches),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("loader", __doc__)
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=12, help="timed batches per measurement")
    parser.add_argument("--step-ms", type=float, default=100.0, help="emulated accelerator step per batch")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the step comparison")
    parser.add_argument("--skip-real-sizes", action="store_true")
    parser.add_argument("--memory-images", type=int, default=600, help="real-size images of the memory run")
    parser.add_argument(
        "--memory-bound-gb", type=float, default=0.25, help="max_buffer_gb of the bounded run"
    )
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument(
        "--only-memory",
        action="store_true",
        help="run the memory measurement alone and update --output in place",
    )
    args = parser.parse_args(argv)
    if args.only_memory:
        with tempfile.TemporaryDirectory() as scratch:
            peak = memory(Path(scratch), args.memory_images, args.size, 2, args.memory_bound_gb)
        previous = json.loads(args.output.read_text()) if args.output.is_file() else {"results": {}}
        previous["results"]["peak_rss_real_sizes"] = peak
        write_result(args.output, previous)
        return 0
    device = torch.device("cpu")  # the loader is CPU work; batches are moved to the device by the trainer
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        dataset = synthetic_dataset(root / "tiny", args.images, args.size, 32)
        teachers = {name: load_teacher(name, "tiny", device=device) for name in FIVE}
        jobs = tuple(TeacherJob(name, "tiny", None, "int8") for name in FIVE)
        run_extraction(ExtractConfig(dataset, jobs, progress=False), teachers, DistContext())
        compute_stats(StatsConfig(dataset, FIVE, "train", root / "stats_tiny"))
        cfg = LoaderConfig(
            dataset,
            FIVE,
            root / "stats_tiny",
            global_batch=args.global_batch,
            num_streams=2,
            shuffle_buffer=64,
        )
        results["tiny_teachers_int8"] = run(cfg, args.batches, args.step_ms, args.repeats)
        if not args.skip_real_sizes:
            real = synthetic_dataset(root / "real", args.images, args.size, 32)
            add_real_size_features(real)
            compute_stats(StatsConfig(real, FIVE, "train", root / "stats_real"))
            cfg = replace(cfg, dataset=real, stats_dir=root / "stats_real")
            results["real_sizes_int8_synthetic_features"] = run(cfg, args.batches, args.step_ms, args.repeats)
        if not args.skip_memory:
            results["peak_rss_real_sizes"] = memory(
                root, args.memory_images, args.size, 2, args.memory_bound_gb
            )
    result = {
        "benchmark": "loader",
        "machine": machine(device),
        "images": args.images,
        "canonical_size": args.size,
        "global_batch": args.global_batch,
        "num_streams": 2,
        "target_step_ratio": 0.95,
        "results": results,
    }
    write_result(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
