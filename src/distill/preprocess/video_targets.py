"""Targets of a video teacher during extraction: each video's frames, in order, through the teacher's clips.

A video teacher (``vjepa2``) gives a frame its target from the clip around it, so the targets of a
shard's frames depend on frames of the same video in other shards (subsample_videos fills shards
without regard to video boundaries). For each requested key, the frames of its whole video are
gathered (this shard's, and the neighbouring shards' while the video continues into them), decoded,
and passed in frame order to the teacher's ``video_features``; the video's targets stay cached while
the following keys belong to it. Metadata must name ``video_id`` and ``frame_index`` (increasing within
a video), as subsample_videos writes it; an image dataset is refused up front. The frames are read
from the manifest's teacher images: a paired dataset's target side, like the image teachers'.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise, takewhile
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from distill.data.jpeg import decode_view
from distill.data.manifest import Manifest
from distill.data.shards import ShardError, iter_shard
from distill.features import TeacherOutput
from distill.teachers.base import Teacher
from distill.teachers.precision import TeacherPrecision, teacher_precision


@runtime_checkable
class VideoTeacher(Protocol):
    """A teacher whose per-frame targets come from a video's frames in order (``VJepa2Teacher``)."""

    clip_frames: int

    def video_features(self, frames: torch.Tensor, clips_per_batch: int = ...) -> TeacherOutput: ...


def video_teachers(teachers: Mapping[str, Teacher]) -> list[str]:
    return [name for name, teacher in teachers.items() if isinstance(teacher, VideoTeacher)]


def check_video_dataset(dataset: Path, manifest: Manifest, teachers: Mapping[str, Teacher]) -> None:
    """A video teacher needs a frames dataset: anything else is refused before any shard is written."""
    names = video_teachers(teachers)
    if names and manifest.kind != "videos":
        raise ValueError(
            f"{dataset}: teacher(s) {names} consume clips of a video's frames in order, but this dataset holds "
            f"{manifest.kind} without video metadata (video_id, frame_index); build a frames dataset with "
            "distill-subsample-videos, or extract the other teachers only"
        )


@dataclass(frozen=True)
class _Frame:
    key: str
    video_id: str
    index: int
    jpeg: bytes


class VideoTargets:
    """Per-frame targets of one video teacher for keys of any shard of the dataset (module docstring)."""

    def __init__(
        self,
        dataset: Path,
        manifest: Manifest,
        teacher: Teacher,
        precision: TeacherPrecision,
        batch_size: int,
    ) -> None:
        if not isinstance(teacher, VideoTeacher):
            raise TypeError(f"teacher {teacher.spec.name!r} is not a video teacher")
        self.teacher, self.precision = teacher, precision
        self.images = dataset / manifest.teacher_images  # a paired dataset's teachers see the target side
        self.size = manifest.canonical_size
        self.clips_per_batch = max(1, batch_size // teacher.clip_frames)
        self.neighbours = {
            shard.name: (tuple(s.name for s in info.shards), i)
            for info in manifest.splits.values()
            for i, shard in enumerate(info.shards)
        }
        self.shards: dict[str, list[_Frame]] = {}  # the few shards the current videos touch
        self.video: dict[str, torch.Tensor] | None = None  # the current video's targets by key

    def features(self, shard: str, keys: list[str]) -> TeacherOutput:
        """Targets ``[len(keys), h, w, C]`` of these keys of ``shard``, one per frame."""
        by_key = {frame.key: frame for frame in self._frames(shard)}
        rows = []
        for key in keys:
            if key not in by_key:
                raise ShardError(f"{self._path(shard)}: no key {key!r} in this shard", self._path(shard), key)
            if self.video is None or key not in self.video:
                self.video = self._video_targets(shard, by_key[key].video_id)
            rows.append(self.video[key])
        return TeacherOutput(patch=torch.stack(rows), cls=None)

    def _path(self, shard: str) -> Path:
        return self.images / shard

    def _frames(self, shard: str) -> list[_Frame]:
        if shard not in self.shards:
            if len(self.shards) >= 3:
                self.shards.pop(next(iter(self.shards)))
            self.shards[shard] = [self._frame(shard, s.key, s.files) for s in iter_shard(self._path(shard))]
        return self.shards[shard]

    def _frame(self, shard: str, key: str, files: Mapping[str, bytes]) -> _Frame:
        where = f"{self._path(shard)} key {key!r}"
        if "jpg" not in files or "json" not in files:
            raise ShardError(
                f"{where}: a frame needs .jpg and .json members; rebuild with distill-subsample-videos"
            )
        meta = json.loads(files["json"])
        if "video_id" not in meta or "frame_index" not in meta:
            raise ValueError(
                f"{where}: metadata has no video_id/frame_index, so a video teacher cannot put the frame in its "
                "clip; build the dataset with distill-subsample-videos"
            )
        return _Frame(key, str(meta["video_id"]), int(meta["frame_index"]), files["jpg"])

    def _video_frames(self, shard: str, video_id: str) -> list[_Frame]:
        """All frames of ``video_id``, from ``shard`` and the neighbouring shards it continues into."""
        names, position = self.neighbours[shard]
        own = self._frames(shard)
        frames = [f for f in own if f.video_id == video_id]
        for step, continues in ((-1, own[0].video_id == video_id), (1, own[-1].video_id == video_id)):
            other = position + step
            while continues and 0 <= other < len(names):
                edge = self._frames(names[other])
                ordered = reversed(edge) if step < 0 else iter(edge)
                part = list(takewhile(lambda f: f.video_id == video_id, ordered))
                frames = part[::-1] + frames if step < 0 else frames + part
                continues = len(part) == len(edge)  # the whole shard is this video: look one further
                other += step
        indices = [f.index for f in frames]
        if any(b <= a for a, b in pairwise(indices)):
            raise ValueError(
                f"{self._path(shard)}: frame indices of video {video_id!r} do not increase in shard order "
                f"({indices[:12]}...); its frames are not contiguous and in order, rebuild with distill-subsample-videos"
            )
        return frames

    def _video_targets(self, shard: str, video_id: str) -> dict[str, torch.Tensor]:
        frames = self._video_frames(shard, video_id)
        views = torch.stack(
            [decode_view(f.jpeg, self.size, f"{self._path(shard)} key {f.key!r}") for f in frames]
        )
        with teacher_precision(self.precision, self.teacher.device):
            patch = self.teacher.video_features(views, self.clips_per_batch).patch.float()
        return {frame.key: patch[i] for i, frame in enumerate(frames)}
