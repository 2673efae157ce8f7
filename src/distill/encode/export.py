"""A student checkpoint and a frames dataset -> a latent dataset (``distill.data.latents``).

Under torchrun, rank r encodes videos r, r + W, r + 2W, ... of each split (numbered in dataset
order); every rank reads the frames' metadata, only the owner decodes a video's JPEGs. Each video
is written atomically, so a file under its final name is complete: a rerun removes temporary files a
killed run left, skips videos whose file exists (checked to come from the same checkpoint), and
encodes the rest. Rank 0 writes ``latents.json`` last, after every rank succeeded.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from distill import distributed as dist
from distill.data.dataset import open_view
from distill.data.frame_arrays import stack_frame_arrays
from distill.data.join import iter_joined
from distill.data.jpeg import decode_view
from distill.data.latents import (
    MANIFEST_NAME,
    CheckpointRef,
    LatentManifest,
    VideoLatents,
    load_latent_manifest,
    read_header,
    save_latent_manifest,
    video_path,
    write_code_table,
    write_video_latents,
)
from distill.data.manifest import load_manifest
from distill.models.quantize import code_layout
from distill.models.student import Student

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodeConfig:
    checkpoint: Path  # a student checkpoint folder (Student.save_pretrained)
    dataset: Path  # a frames dataset (subsample_videos)
    output: Path  # the latent dataset folder
    splits: tuple[str, ...] = ()  # empty: every split of the frames dataset
    batch_size: int = 64
    device: str | None = None  # default: cuda:LOCAL_RANK when present, else cpu
    overwrite: bool = False  # delete the output's latents first (e.g. after retraining the student)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class EncodeReport:
    rank: int
    videos_written: int = 0
    videos_skipped: int = 0
    frames: int = 0  # frames that went through the encoder
    written: list[str] = field(default_factory=list)


@dataclass
class _Frame:
    key: str
    meta: dict[str, Any]
    jpeg: bytes | None  # None for another rank's video


def encode_latents(cfg: EncodeConfig) -> EncodeReport:
    """Load the student on this rank's device and encode; see the module docstring."""
    info = dist.current(cfg.device)
    model = Student.from_pretrained(cfg.checkpoint, device=info.device)
    layout = code_layout(model.config)
    ref = CheckpointRef.of(cfg.checkpoint, model.config.d_z, model.config.image_size, layout)
    return run_encoding(cfg, model, ref, info)


def run_encoding(
    cfg: EncodeConfig, model: Student, ref: CheckpointRef, info: dist.DistContext
) -> EncodeReport:
    """Encode with an already loaded student (tests and the world-model demo pass theirs)."""
    layout = code_layout(model.config)
    if layout != ref.layout:
        raise ValueError(
            f"{cfg.checkpoint}: the student's codes are {layout}, the reference says {ref.layout}; "
            "build it with CheckpointRef.of(..., code_layout(student.config))"
        )
    view_manifest = load_manifest(cfg.dataset)
    if view_manifest.kind != "videos":
        raise ValueError(
            f"{cfg.dataset} holds {view_manifest.kind}, not video frames; build it with subsample_videos"
        )
    if view_manifest.canonical_size != ref.image_size:
        raise ValueError(
            f"{cfg.dataset} holds {view_manifest.canonical_size}px frames, the student {cfg.checkpoint} sees "
            f"{ref.image_size}px; rebuild the frames with subsample_videos --size {ref.image_size}"
        )
    splits = cfg.splits or tuple(view_manifest.splits)
    _prepare_output(cfg, ref, info)
    report = EncodeReport(info.rank)
    order: dict[str, list[str]] = {}
    error: BaseException | None = None
    model.eval()
    try:
        for split in splits:
            order[split] = []
            for number, (video_id, frames) in enumerate(_videos(cfg.dataset, split, info)):
                order[split].append(video_id)
                if number % info.world_size == info.rank:
                    _encode_video(cfg, model, ref, split, video_id, frames, report)
    except Exception as exc:  # every rank must reach the collective below, then all fail together
        error = exc
    if not dist.all_ok(info, error is None):
        if error is not None:
            raise error
        raise RuntimeError("encoding failed on another rank (see its log); rerun to resume")
    if info.is_main:
        if model.quantizer is not None:
            write_code_table(cfg.output, model.quantizer.table().cpu(), ref.fingerprint)
        _write_manifest(cfg, ref, order)
    dist.barrier(info)
    log.info(
        "rank %d: %d videos encoded, %d already complete, %d frames",
        info.rank,
        report.videos_written,
        report.videos_skipped,
        report.frames,
    )
    return report


def _prepare_output(cfg: EncodeConfig, ref: CheckpointRef, info: dist.DistContext) -> None:
    """Refuse to mix latents of another checkpoint; ``overwrite`` deletes the old ones (rank 0)."""
    existing = cfg.output / MANIFEST_NAME
    if info.is_main and cfg.overwrite and cfg.output.exists():
        for child in cfg.output.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
        existing.unlink(missing_ok=True)
    dist.barrier(info)
    if existing.is_file():
        old = load_latent_manifest(cfg.output).checkpoint
        if old.fingerprint != ref.fingerprint:
            raise ValueError(
                f"{cfg.output} holds latents of checkpoint {old.path} ({old.fingerprint}), not of "
                f"{cfg.checkpoint} ({ref.fingerprint}); pass --overwrite or choose another output"
            )


def _videos(dataset: Path, split: str, info: dist.DistContext) -> Iterator[tuple[str, list[_Frame]]]:
    """(video id, its frames in order) of a split; JPEG bytes kept only for this rank's videos."""
    view = open_view(dataset, split, (), None, False)
    finished: set[str] = set()
    current: str | None = None
    frames: list[_Frame] = []
    number = 0
    for shard in view.shards:
        for joined in iter_joined(view.path, shard.name, [], expected=shard.count):
            where = f"{view.path}/images/{shard.name} key {joined.key!r}"
            try:
                meta = json.loads(joined.meta)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(
                    f"{where}: metadata is not JSON ({exc}); rebuild the frames dataset"
                ) from exc
            video_id = meta.get("video_id")
            if video_id is None or "frame_index" not in meta:
                raise ValueError(
                    f"{where}: metadata has no video_id/frame_index; this is not a video dataset"
                )
            if video_id != current:
                if current is not None:
                    yield current, frames
                    finished.add(current)
                    number += 1
                if video_id in finished:
                    raise ValueError(
                        f"{where}: video {video_id!r} continues after other videos; rebuild the dataset"
                    )
                current, frames = str(video_id), []
            elif int(meta["frame_index"]) <= int(frames[-1].meta["frame_index"]):
                raise ValueError(
                    f"{where}: frame index {meta['frame_index']} does not increase in {video_id!r}"
                )
            mine = number % info.world_size == info.rank
            frames.append(_Frame(joined.key, meta, joined.jpeg if mine else None))
    if current is not None:
        yield current, frames


def _encode_video(
    cfg: EncodeConfig,
    model: Student,
    ref: CheckpointRef,
    split: str,
    video_id: str,
    frames: list[_Frame],
    report: EncodeReport,
) -> None:
    target = video_path(cfg.output, split, video_id)
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        log.info("removing %s, left by an interrupted run", stale)
        stale.unlink(missing_ok=True)
    if target.exists():
        header = read_header(target)
        if header.checkpoint == ref.fingerprint and header.frames == len(frames):
            report.videos_skipped += 1
            return
        log.warning(
            "redoing %s: it holds %d frames of checkpoint %s", target, header.frames, header.checkpoint
        )
    where = f"{cfg.dataset} split {split!r} video {video_id!r}"
    size = ref.image_size
    zs, codes = [], []
    with torch.inference_mode():
        for start in range(0, len(frames), cfg.batch_size):
            chunk = frames[start : start + cfg.batch_size]
            images = torch.stack([decode_view(f.jpeg or b"", size, f"{where} key {f.key!r}") for f in chunk])
            images = images.to(next(model.parameters()).device)
            if ref.codes:  # z is what the codes stand for, exactly
                codes.append(model.encode(images, codes=True))
                zs.append(model.codes_to_z(codes[-1]).float().cpu())
            else:
                zs.append(model.encode(images).float().cpu())
    video = VideoLatents(
        video_id,
        torch.cat(zs),
        torch.tensor([int(f.meta["frame_index"]) for f in frames], dtype=torch.int64),
        torch.tensor([float(f.meta["timestamp"]) for f in frames], dtype=torch.float64),
        stack_frame_arrays([f.meta for f in frames], [f.key for f in frames], where),
        torch.cat(codes).cpu() if codes else None,
    )
    write_video_latents(target, video, split, ref.fingerprint)
    report.videos_written += 1
    report.frames += len(frames)
    report.written.append(str(target))


def _write_manifest(cfg: EncodeConfig, ref: CheckpointRef, order: dict[str, list[str]]) -> None:
    """Rank 0, after every rank finished: every video's header read back and listed in dataset order."""
    splits: dict[str, tuple[tuple[str, int], ...]] = {}
    arrays: dict[str, int] | None = None
    for split, videos in order.items():
        listed = []
        for video_id in videos:
            path = video_path(cfg.output, split, video_id)
            header = read_header(path)
            if (
                header.checkpoint != ref.fingerprint
                or header.video_id != video_id
                or header.codes != ref.codes
            ):
                raise ValueError(
                    f"{path} is not {video_id!r} of checkpoint {ref.fingerprint}; rerun to redo it"
                )
            if arrays is None:
                arrays = header.arrays
            elif header.arrays != arrays:
                raise ValueError(
                    f"{path} carries arrays {header.arrays}, other videos {arrays}; every video needs the same"
                )
            listed.append((video_id, header.frames))
        splits[split] = tuple(listed)
    save_latent_manifest(cfg.output, LatentManifest(ref, str(cfg.dataset.resolve()), splits, arrays or {}))
