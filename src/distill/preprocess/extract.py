"""Teacher features for every image shard: ``<dataset>/<teacher>/<split>-NNNNNN.tar``.

Each feature shard has the same name and the same key order as its image shard. Under torchrun,
rank r takes shards r, r+W, r+2W, ... of the requested splits' shards listed in manifest order.
Shards are written atomically, so a feature shard under its final name is complete; a rerun
removes stale temporary files of a killed run, skips shards whose keys already equal the image
shard's, and redoes the rest. Rank 0 alone writes the manifest (under its lock), after every
rank reported success: the teacher's spec, the precision it ran in, storage dtype and stored
grid, and the splits that are complete; a rerun that would produce them differently (another
precision, say) is refused. A video teacher (``vjepa2``) gets each frame's target from its
video's frames in order (:mod:`distill.preprocess.video_targets`), so it needs a frames dataset.
Run as ``torchrun --nproc_per_node N -m distill.preprocess.extract ...`` or without torchrun;
scripts/preprocessing/feature_extraction.py is the same command.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

from distill import distributed as dist
from distill.data.codec import STORAGE_DTYPES, StorageDtype, check_storage
from distill.data.jpeg import decode_view
from distill.data.manifest import (
    Manifest,
    ShardInfo,
    TeacherRecord,
    load_manifest,
    manifest_path,
    update_manifest,
)
from distill.data.prefetch import prefetched
from distill.data.shards import ShardError, iter_shard, list_keys
from distill.preprocess.cli import setup_logging
from distill.preprocess.feature_writer import FeatureWriter, OpenShard, ShardTask
from distill.preprocess.video_targets import VideoTargets, check_video_dataset, video_teachers
from distill.teachers.base import Teacher
from distill.teachers.precision import (
    TEACHER_PRECISIONS,
    TeacherPrecision,
    check_precision,
    resolved_precision,
    run_teacher,
)
from distill.teachers.registry import Source, get_entry, load_teacher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeacherJob:
    """One teacher to extract: how to build it and how to store its features."""

    name: str
    source: Source = "tiny"
    weights: str | None = None  # hub id, local directory or checkpoint file (source="hub")
    storage: StorageDtype = "fp16"
    stored_grid: tuple[int, int] | None = None  # area-downsample the patch grid to this (e.g. SAM)
    outlier_tokens: int = 0  # int8: keep each sample's K highest-norm tokens in float16 (codec)


@dataclass(frozen=True)
class ExtractConfig:
    dataset: Path
    teachers: tuple[TeacherJob, ...]
    splits: tuple[str, ...] = ()  # empty: every split in the manifest
    batch_size: int = 64
    device: str | None = None  # default: cuda:LOCAL_RANK when present, else cpu
    decode_threads: int = 1  # JPEG decoding threads feeding the teachers
    precision: TeacherPrecision = (
        "auto"  # auto: bf16 autocast on GPU, fp32 on CPU (distill.teachers.precision)
    )
    overwrite: bool = False  # re-extract from scratch (deletes these teachers' shards of these splits)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.decode_threads < 1:
            raise ValueError(
                f"batch_size ({self.batch_size}) and decode_threads ({self.decode_threads}) must be at least 1"
            )
        check_precision(self.precision)


@dataclass
class ExtractReport:
    rank: int
    shards_written: int = 0
    shards_skipped: int = 0
    samples: int = 0  # samples that went through the teachers
    seconds: float = 0.0
    written: list[str] = field(default_factory=list)


def make_record(job: TeacherJob, teacher: Teacher, precision: TeacherPrecision) -> TeacherRecord:
    spec = teacher.spec
    if spec.name != job.name:
        raise ValueError(f"teacher built for {job.name!r} reports spec name {spec.name!r}")
    grid = job.stored_grid or spec.grid
    if grid[0] > spec.grid[0] or grid[1] > spec.grid[1] or min(grid) < 1:
        raise ValueError(
            f"teacher {job.name!r}: stored grid {grid} must be between 1x1 and its grid {spec.grid}"
        )
    weights = job.weights if job.source == "tiny" or job.weights else get_entry(job.name).default_weights
    if not 0 <= job.outlier_tokens < grid[0] * grid[1]:
        raise ValueError(
            f"teacher {job.name!r}: {job.outlier_tokens} outlier tokens of a {grid[0]}x{grid[1]} grid; use 0 <= K < {grid[0] * grid[1]}"
        )
    return TeacherRecord(
        spec,
        job.storage,
        grid,
        job.source,
        weights,
        resolved_precision(precision, teacher.device),
        outlier_tokens=job.outlier_tokens,
    )


def extract_features(cfg: ExtractConfig) -> ExtractReport:
    """Build the requested teachers (on this rank's device) and extract; see the module docstring."""
    info = dist.current(cfg.device)
    teachers = {
        job.name: load_teacher(job.name, job.source, job.weights, info.device) for job in cfg.teachers
    }
    return run_extraction(cfg, teachers, info)


def run_extraction(
    cfg: ExtractConfig, teachers: Mapping[str, Teacher], info: dist.DistContext
) -> ExtractReport:
    """Extract with already built teachers (the benchmark times these same modules bare)."""
    if not cfg.teachers:
        raise ValueError("no teacher to extract; name at least one")
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {cfg.batch_size}")
    manifest = load_manifest(cfg.dataset)
    check_video_dataset(cfg.dataset, manifest, teachers)
    splits = cfg.splits or tuple(manifest.splits)
    for split in splits:
        manifest.split(split, cfg.dataset)
    records = {job.name: make_record(job, teachers[job.name], cfg.precision) for job in cfg.teachers}
    images = cfg.dataset / manifest.teacher_images  # a paired dataset's teachers see the target images
    _register(cfg, manifest, records, splits, info)
    items = [(split, shard) for split in splits for shard in manifest.split(split).shards]
    mine = items[info.rank :: info.world_size]
    report = ExtractReport(info.rank)
    start = time.perf_counter()
    error: BaseException | None = None
    try:
        with tqdm(
            total=sum(shard.count for _, shard in mine),
            unit="img",
            desc=f"extract {'+'.join(records)}",
            disable=not (cfg.progress and info.is_main),
            dynamic_ncols=True,
        ) as bar:
            tasks = []
            for _split, shard in mine:
                task = _plan(cfg, images, shard, records)
                if task.pending:
                    tasks.append(task)
                else:
                    report.shards_skipped += 1
                    bar.update(shard.count)
            _run_tasks(cfg, manifest, images, tasks, teachers, records, report, bar)
    except Exception as exc:  # every rank must reach the collective below, then all fail together
        error = exc
    report.seconds = time.perf_counter() - start
    if not dist.all_ok(info, error is None):
        if error is not None:
            raise error
        raise RuntimeError("feature extraction failed on another rank (see its log); rerun to resume")
    if info.is_main:
        update_manifest(cfg.dataset, lambda m: _mark_complete(m, records, splits))
    dist.barrier(info)
    log.info(
        "rank %d: %d shards written, %d already complete, %d samples in %.1fs",
        info.rank,
        report.shards_written,
        report.shards_skipped,
        report.samples,
        report.seconds,
    )
    return report


def _register(
    cfg: ExtractConfig,
    manifest: Manifest,
    records: dict[str, TeacherRecord],
    splits: tuple[str, ...],
    info: dist.DistContext,
) -> None:
    """Refuse to mix differently produced features; rank 0 records the teachers before any shard is written."""
    conflicts = {
        n for n, r in records.items() if n in manifest.teachers and not manifest.teachers[n].same_features(r)
    }
    if conflicts and not cfg.overwrite:
        name = sorted(conflicts)[0]
        old, new = manifest.teachers[name], records[name]
        resume = ""
        if replace(new, precision=old.precision).same_features(old):
            resume = f"pass --precision {old.precision} to resume in the recorded precision, "
        raise ValueError(
            f"{manifest_path(cfg.dataset)}: features of teacher {name!r} were extracted differently "
            f"(manifest: {old.to_dict()}, now: {new.to_dict()}); {resume}"
            "pass --overwrite to replace them, or extract into another dataset"
        )
    if info.is_main:
        for name in records:
            folder = cfg.dataset / name
            if name in conflicts:
                doomed = list(folder.glob("*.tar"))
            elif cfg.overwrite:
                doomed = [folder / shard.name for split in splits for shard in manifest.split(split).shards]
            else:
                doomed = []
            for path in doomed:
                path.unlink(missing_ok=True)
        update_manifest(
            cfg.dataset, lambda m: _record_teachers(m, records, conflicts, splits if cfg.overwrite else ())
        )
    dist.barrier(info)


def _record_teachers(
    manifest: Manifest, records: dict[str, TeacherRecord], conflicts: set[str], redo: tuple[str, ...]
) -> Manifest:
    teachers = dict(manifest.teachers)
    for name, record in records.items():
        old = () if name in conflicts or name not in teachers else teachers[name].complete_splits
        teachers[name] = replace(record, complete_splits=tuple(s for s in old if s not in redo))
    return replace(manifest, teachers=teachers)


def _mark_complete(
    manifest: Manifest, records: dict[str, TeacherRecord], splits: tuple[str, ...]
) -> Manifest:
    teachers = dict(manifest.teachers)
    for name in records:
        done = teachers[name].complete_splits
        teachers[name] = replace(teachers[name], complete_splits=tuple(sorted({*done, *splits})))
    return replace(manifest, teachers=teachers)


def _is_complete(path: Path, keys: list[str]) -> bool:
    if not path.exists():
        return False
    try:
        return list_keys(path) == keys
    except ShardError as exc:
        log.warning("redoing %s: %s", path, exc)
        return False


def _remove_stale_temporaries(path: Path) -> None:
    """Temporary files of a killed run (distill.io.atomic_path names them ``.<name>.*.tmp``)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        log.info("removing %s, left by an interrupted run", stale)
        stale.unlink(missing_ok=True)


def decode_batches(
    path: Path, size: int, batch_size: int, threads: int
) -> Iterator[tuple[list[str], torch.Tensor]]:
    """(keys, uint8 [B, 3, S, S]) batches of one image shard, in shard order."""
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    try:
        pending: list[tuple[str, bytes]] = []
        for sample in iter_shard(path):
            if "jpg" not in sample.files:
                raise ShardError(
                    f"{path}: key {sample.key!r} has no .jpg member; rebuild the image shard with organize"
                )
            pending.append((sample.key, sample.files["jpg"]))
            if len(pending) == batch_size:
                yield _decode(pending, path, size, pool)
                pending = []
        if pending:
            yield _decode(pending, path, size, pool)
    finally:
        if pool is not None:
            pool.shutdown()


def _decode(
    pending: list[tuple[str, bytes]], path: Path, size: int, pool: ThreadPoolExecutor | None
) -> tuple[list[str], torch.Tensor]:
    def one(item: tuple[str, bytes]) -> torch.Tensor:
        return decode_view(item[1], size, f"{path} key {item[0]!r}")

    views = list(pool.map(one, pending)) if pool is not None else [one(item) for item in pending]
    return [key for key, _ in pending], torch.stack(views)


def _plan(cfg: ExtractConfig, images: Path, shard: ShardInfo, records: dict[str, TeacherRecord]) -> ShardTask:
    """Which teachers still need this shard. Image keys are listed only to verify an existing feature shard."""
    image_path = images / shard.name
    keys: list[str] | None = None
    pending = []
    for name in records:
        target = cfg.dataset / name / shard.name
        _remove_stale_temporaries(target)
        if target.exists():
            if keys is None:
                keys = list_keys(image_path)
                if len(keys) != shard.count:
                    raise ShardError(
                        f"{image_path}: {len(keys)} samples but the manifest says {shard.count}; rebuild the dataset with organize",
                        image_path,
                    )
            if _is_complete(target, keys):
                continue
        pending.append(name)
    return ShardTask(shard, tuple(pending))


def _task_batches(
    cfg: ExtractConfig, images: Path, size: int, tasks: list[ShardTask], device: torch.device
) -> Iterator[tuple[ShardTask, list[str], torch.Tensor]]:
    """Decoded batches, page-locked on a GPU machine so the copy to the GPU can run asynchronously."""
    for task in tasks:
        for keys, batch in decode_batches(images / task.shard.name, size, cfg.batch_size, cfg.decode_threads):
            yield task, keys, batch.pin_memory() if device.type == "cuda" else batch


def _run_tasks(
    cfg: ExtractConfig,
    manifest: Manifest,
    images: Path,
    tasks: list[ShardTask],
    teachers: Mapping[str, Teacher],
    records: dict[str, TeacherRecord],
    report: ExtractReport,
    bar: tqdm,
) -> None:
    """Decode (a thread, running ahead across shard boundaries) -> forward (here) -> encode, write and
    finish shards (a thread: :mod:`distill.preprocess.feature_writer`)."""
    current: OpenShard | None = None
    video = {
        name: VideoTargets(cfg.dataset, manifest, teachers[name], cfg.precision, cfg.batch_size)
        for name in video_teachers(teachers)
    }
    device = next(iter(teachers.values())).device
    with FeatureWriter(records, device) as writer:
        for task, keys, decoded in prefetched(
            functools.partial(_task_batches, cfg, images, manifest.canonical_size, tasks, device), depth=3
        ):
            # once per batch and without waiting: each teacher moving the batch itself would copy
            # it five times, each copy from pageable memory stalling the host until the GPU's queue
            # drains, so the kernels of the next teacher start late
            reads_images = any(name not in video for name in task.pending)
            batch = decoded.to(device, non_blocking=True) if reads_images else decoded
            if current is None or current.task is not task:
                if current is not None:
                    writer.finish(current)
                current = writer.open(cfg.dataset, images, task)
            outputs = {
                name: video[name].features(task.shard.name, keys)
                if name in video
                else run_teacher(teachers[name], batch, cfg.precision)
                for name in task.pending
            }
            writer.write(current, keys, outputs)
            report.samples += len(keys)
            bar.update(len(keys))
        if current is not None:
            writer.finish(current)
    report.written += [str(path) for path in writer.written]
    report.shards_written += writer.shards_written


def parse_assignments(values: list[str], what: str) -> dict[str, str]:
    """``["sam=32x32", ...]`` -> ``{"sam": "32x32"}`` with an error naming the bad entry."""
    out = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise ValueError(f"{what}: expected NAME=VALUE, got {value!r}")
        out[name] = rest
    return out


def _count(text: str, what: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{what}: expected a token count, got {text!r}")
    return int(text)


def parse_grid(text: str) -> tuple[int, int]:
    h, sep, w = text.lower().partition("x")
    if not sep or not h.isdigit() or not w.isdigit():
        raise ValueError(f"grid must look like 32x32, got {text!r}")
    return int(h), int(w)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset", type=Path, help="dataset folder holding manifest.json")
    parser.add_argument(
        "--teachers", nargs="+", required=True, help="registry names, e.g. clip dinov2 mae sam depth_anything"
    )
    parser.add_argument(
        "--source", choices=["tiny", "hub"], default="hub", help="tiny: offline miniatures; hub: real weights"
    )
    parser.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="weights (hub id, dir or file) per teacher",
    )
    parser.add_argument(
        "--storage",
        choices=STORAGE_DTYPES,
        default="fp16",
        help="storage dtype of every teacher (default fp16)",
    )
    parser.add_argument(
        "--storage-for",
        action="append",
        default=[],
        metavar="NAME=DTYPE",
        help="per-teacher storage override",
    )
    parser.add_argument(
        "--stored-grid",
        action="append",
        default=[],
        metavar="NAME=HxW",
        help="area-downsample a teacher's grid",
    )
    parser.add_argument(
        "--outlier-tokens",
        action="append",
        default=[],
        metavar="NAME=K",
        help="int8 teachers: keep each sample's K highest-norm tokens in float16, out of the per-channel "
        "scales (for high-norm artifact tokens, e.g. CLIP-L, DINOv2 without registers; see docs/dataset_format.md)",
    )
    parser.add_argument("--splits", nargs="*", default=[], help="splits to extract (default: all)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK when present, else cpu")
    parser.add_argument("--decode-threads", type=int, default=1, help="JPEG decoding threads")
    parser.add_argument(
        "--precision",
        choices=TEACHER_PRECISIONS,
        default="auto",
        help="teacher forward pass: auto = bf16 autocast on GPU (TF32 for what stays fp32), fp32 on CPU; "
        "fp32 = full fp32 everywhere (TF32 off)",
    )
    parser.add_argument("--overwrite", action="store_true", help="re-extract these teachers from scratch")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def config_from_args(args: argparse.Namespace) -> ExtractConfig:
    weights = parse_assignments(args.weights, "--weights")
    storage = {k: check_storage(v) for k, v in parse_assignments(args.storage_for, "--storage-for").items()}
    grids = {k: parse_grid(v) for k, v in parse_assignments(args.stored_grid, "--stored-grid").items()}
    outliers = {
        k: _count(v, "--outlier-tokens")
        for k, v in parse_assignments(args.outlier_tokens, "--outlier-tokens").items()
    }
    unknown = (set(weights) | set(storage) | set(grids) | set(outliers)) - set(args.teachers)
    if unknown:
        raise ValueError(
            f"options name teachers that are not extracted: {sorted(unknown)}; add them to --teachers"
        )
    if weights and args.source == "tiny":
        raise ValueError("--weights needs --source hub (tiny teachers are built from random weights)")
    jobs = tuple(
        TeacherJob(
            name,
            args.source,
            weights.get(name),
            storage.get(name, args.storage),
            grids.get(name),
            outliers.get(name, 0),
        )
        for name in args.teachers
    )
    for job in jobs:
        if job.outlier_tokens and job.storage != "int8":
            raise ValueError(
                f"--outlier-tokens {job.name}=...: {job.name} is stored as {job.storage}, not int8"
            )
    return ExtractConfig(
        dataset=args.dataset,
        teachers=jobs,
        splits=tuple(args.splits),
        batch_size=args.batch_size,
        device=args.device,
        decode_threads=args.decode_threads,
        precision=check_precision(args.precision),
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    cfg = config_from_args(args)
    info = dist.init_control_group()
    try:
        report = extract_features(cfg)
    finally:
        dist.shutdown(info)
    if info.is_main:
        print(
            json.dumps(
                {
                    "rank": report.rank,
                    "written": report.shards_written,
                    "skipped": report.shards_skipped,
                    "samples": report.samples,
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
