"""Frames of each video in order, as fixed-length clips, for clip-level use (world models, decoding).

Reads a video dataset (``subsample_videos``) shard by shard in manifest order. Frames of a
video are contiguous and in frame order there; anything else (a video that reappears later, a
frame index that goes backwards) is an error naming the shard and key, since clips would be
silently wrong. Clips start every ``stride`` frames (default: ``clip_len``, no overlap); frames
left at the end of a video that do not fill a clip are yielded as a shorter clip only with
``allow_short=True``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from distill.data.dataset import DecodedSample, open_view
from distill.data.join import iter_joined
from distill.features import TeacherOutput


@dataclass
class VideoClip:
    video_id: str
    frame_indices: list[int]  # indices in the source video, increasing
    timestamps: list[float]  # seconds
    frames: torch.Tensor  # uint8 [T, 3, S, S]
    targets: dict[str, TeacherOutput]  # patch [T, h, w, C], cls [T, C] | None (normalised when stats given)


def video_clips(
    dataset: Path | str,
    split: str = "train",
    clip_len: int = 8,
    stride: int | None = None,
    teachers: Sequence[str] = (),
    stats_dir: Path | str | None = None,
    normalize: bool = True,
    allow_short: bool = False,
) -> Iterator[VideoClip]:
    """Clips of ``clip_len`` consecutive kept frames of each video, in video and frame order."""
    step = stride or clip_len
    if clip_len < 1 or step < 1:
        raise ValueError(f"clip_len and stride must be >= 1, got {clip_len} and {step}")
    view = open_view(dataset, split, teachers, stats_dir, normalize and bool(teachers))
    if view.manifest.kind != "videos":
        raise ValueError(
            f"{view.path} holds {view.manifest.kind}, not video frames; build it with subsample_videos.py"
        )

    def make(frames: Sequence[DecodedSample]) -> VideoClip:
        batch = view.collate(frames)
        return VideoClip(
            str(frames[0].meta["video_id"]),
            [int(f.meta["frame_index"]) for f in frames],
            [float(f.meta["timestamp"]) for f in frames],
            batch.images,
            batch.targets,
        )

    finished: set[str] = set()
    window = _Window(clip_len, step)
    current_id: str | None = None
    for shard in view.shards:
        for joined in iter_joined(view.path, shard.name, view.teachers, expected=shard.count):
            sample = view.decode(joined)
            where = f"{view.path}/{shard.name} key {sample.key!r}"
            video_id = sample.meta.get("video_id")
            if video_id is None or "frame_index" not in sample.meta:
                raise ValueError(
                    f"{where}: metadata has no video_id/frame_index; this is not a video dataset"
                )
            if video_id != current_id:
                if current_id is not None:
                    tail = window.finish()
                    if allow_short and tail:
                        yield make(tail)
                    finished.add(current_id)
                if video_id in finished:
                    raise ValueError(
                        f"{where}: video {video_id!r} continues after other videos; its frames are not contiguous"
                    )
                current_id = str(video_id)
            elif window.last_index is not None and int(sample.meta["frame_index"]) <= window.last_index:
                raise ValueError(
                    f"{where}: frame index {sample.meta['frame_index']} does not increase within video {video_id!r}"
                )
            clip = window.push(sample)
            if clip:
                yield make(clip)
    tail = window.finish()
    if allow_short and tail:
        yield make(tail)


class _Window:
    """Sliding window over one video's frames: full clips every ``step`` frames, and the unseen tail."""

    def __init__(self, clip_len: int, step: int) -> None:
        self.clip_len, self.step = clip_len, step
        self.frames: list[DecodedSample] = []
        self.fresh = 0  # frames in the window not yet part of a yielded clip
        self.skip = 0  # frames to drop before the next clip starts (stride > clip_len)
        self.last_index: int | None = None

    def push(self, sample: DecodedSample) -> list[DecodedSample]:
        self.last_index = int(sample.meta["frame_index"])
        if self.skip:
            self.skip -= 1
            return []
        self.frames.append(sample)
        self.fresh += 1
        if len(self.frames) < self.clip_len:
            return []
        clip, self.fresh = self.frames, 0
        self.frames = clip[self.step :] if self.step < self.clip_len else []
        self.skip = max(self.step - self.clip_len, 0)
        return clip

    def finish(self) -> list[DecodedSample]:
        """The frames never yielded in a full clip (with their overlap), and reset for the next video."""
        tail = self.frames if self.fresh else []
        self.frames, self.fresh, self.skip, self.last_index = [], 0, 0, None
        return tail
