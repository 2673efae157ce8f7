"""One split of a dataset read for evaluation: frames, video ids, numeric per-frame arrays, stored features."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from distill.data.dataset import DecodedSample, open_view
from distill.data.frame_arrays import stack_frame_arrays
from distill.data.join import iter_joined
from distill.features import TeacherOutput


@dataclass
class FrameBatch:
    """Consecutive frames of a split in dataset order; ``targets`` are raw (dequantised, not normalised)."""

    keys: list[str]
    images: torch.Tensor  # uint8 [B, 3, S, S]
    video_ids: list[str]  # the frame's video, or its own key for image datasets
    arrays: dict[str, torch.Tensor]  # name -> float64 [B, K], from the frames' metadata "arrays"
    targets: dict[str, TeacherOutput] = field(default_factory=dict)


def iter_frames(
    dataset: Path, split: str, teachers: Sequence[str] = (), batch_size: int = 256, limit: int | None = None
) -> Iterator[FrameBatch]:
    """Batches of ``split`` in manifest order (so a video's frames stay together), at most ``limit`` frames."""
    view = open_view(dataset, split, teachers, None, normalize=False)
    pending: list[DecodedSample] = []
    seen = 0
    for shard in view.shards:
        for joined in iter_joined(view.path, shard.name, view.teachers, expected=shard.count):
            if limit is not None and seen >= limit:
                break
            pending.append(view.decode(joined))
            seen += 1
            if len(pending) == batch_size:
                yield _batch(view.collate(pending).targets, pending, f"{view.path} split {split!r}")
                pending = []
    if pending:
        yield _batch(view.collate(pending).targets, pending, f"{view.path} split {split!r}")


def _batch(targets: dict[str, TeacherOutput], samples: list[DecodedSample], where: str) -> FrameBatch:
    return FrameBatch(
        [s.key for s in samples],
        torch.stack([s.image for s in samples]),
        [str(s.meta.get("video_id", s.key)) for s in samples],
        stack_frame_arrays([s.meta for s in samples], [s.key for s in samples], where),
        targets,
    )
