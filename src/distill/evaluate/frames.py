"""One split of a dataset read for evaluation: frames, video ids, numeric per-frame arrays, stored features."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from distill.data.dataset import DecodedSample, open_view
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
        _arrays([s.meta for s in samples], [s.key for s in samples], where),
        targets,
    )


def _arrays(metas: list[dict[str, Any]], keys: list[str], where: str) -> dict[str, torch.Tensor]:
    """Stack each frame's ``meta["arrays"]``; every frame must carry the same names and lengths."""
    names = sorted(metas[0].get("arrays", {}))
    out = {}
    for name in names:
        rows = []
        for meta, key in zip(metas, keys, strict=True):
            value = meta.get("arrays", {}).get(name)
            if value is None:
                raise ValueError(f"{where}: frame {key!r} lacks the array {name!r} other frames carry")
            rows.append(torch.tensor(value, dtype=torch.float64).reshape(-1))
        if len({len(r) for r in rows}) != 1:
            raise ValueError(f"{where}: array {name!r} has different lengths across frames")
        out[name] = torch.stack(rows)
    for meta, key in zip(metas, keys, strict=True):
        extra = sorted(set(meta.get("arrays", {})) - set(names))
        if extra:
            raise ValueError(f"{where}: frame {key!r} carries arrays {extra} the first frame lacks")
    return out
