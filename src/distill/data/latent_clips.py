"""Windows of a latent dataset as ``[B, T, d_z]`` batches with the per-frame arrays aligned.

A window is ``history + horizon`` frames of one video, ``frame_skip`` frames apart: positions
``p, p + k, ..., p + (T - 1) k`` of the video's latents. Row j of every array holds the rows of
frames ``p_j .. p_j + k - 1`` concatenated (``[B, T, k * K]``): for actions, everything applied
between window frame j and window frame j + 1, so no action is dropped by skipping frames. A window
therefore needs ``T * k`` frames after its start; shorter videos give no window.

Training order is deterministic and resumable like the training loader: the windows form an
endless stream of seeded epoch permutations (epoch e shuffled with ``seed * 1_000_003 + e``), global
batch b is the stream's items ``[b * B, (b + 1) * B)``, rank r of W takes items r, r + W, ... of it,
so the loader position is one integer and resuming at batch b yields exactly what an uninterrupted
run yields from b on. :meth:`LatentClips.in_order` is one pass in dataset order (evaluation).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from distill.data.latents import (
    LatentManifest,
    VideoLatents,
    load_latent_manifest,
    read_video_latents,
    video_path,
)


@dataclass
class LatentBatch:
    video_ids: list[str]
    starts: list[int]  # position of each window's first frame in its video's latents
    z: torch.Tensor  # float32 [B, T, d_z]
    frame_indices: torch.Tensor  # int64 [B, T], the window frames' indices in the source videos
    arrays: dict[str, torch.Tensor]  # name -> float32 [B, T, frame_skip * K]
    codes: torch.Tensor | None = None  # int64 [B, T, codes] when the latents carry codes


class LatentClips:
    """Every window of one split of a latent dataset (held in memory: z is small)."""

    def __init__(
        self,
        root: Path | str,
        split: str = "train",
        history: int = 4,
        horizon: int = 1,
        frame_skip: int = 1,
        stride: int = 1,
        arrays: Sequence[str] | None = None,
    ) -> None:
        if min(history, horizon, frame_skip, stride) < 1:
            raise ValueError(
                f"history, horizon, frame_skip and stride must be >= 1, got {history}, {horizon}, {frame_skip}, {stride}"
            )
        self.root = Path(root)
        self.manifest: LatentManifest = load_latent_manifest(root)
        self.split, self.history, self.horizon, self.skip = split, history, horizon, frame_skip
        names = list(self.manifest.arrays) if arrays is None else list(arrays)
        missing = sorted(set(names) - set(self.manifest.arrays))
        if missing:
            raise KeyError(
                f"{self.root}: the latents carry no arrays {missing} (they carry {sorted(self.manifest.arrays)})"
            )
        self.array_names = names
        fingerprint = self.manifest.checkpoint.fingerprint
        self.videos: list[VideoLatents] = []
        for video_id, frames in self.manifest.videos(split, self.root):
            video = read_video_latents(video_path(self.root, split, video_id), fingerprint)
            if (video.codes is None) == bool(self.manifest.checkpoint.codes):
                raise ValueError(
                    f"{video_path(self.root, split, video_id)}: codes {'missing' if video.codes is None else 'present'}, "
                    f"the manifest says {self.manifest.checkpoint.codes} per frame; rerun distill-encode --overwrite"
                )
            if video.video_id != video_id or video.frames != frames:
                raise ValueError(
                    f"{video_path(self.root, split, video_id)}: holds {video.video_id!r} with {video.frames} "
                    f"frames, the manifest says {video_id!r} with {frames}; rerun distill-encode"
                )
            self.videos.append(video)
        span = self.length * frame_skip
        self.index = [
            (v, start)
            for v, video in enumerate(self.videos)
            for start in range(0, video.frames - span + 1, stride)
        ]
        if not self.index:
            raise ValueError(
                f"{self.root} split {split!r}: no video has the {span} frames a window of "
                f"{self.length} frames {frame_skip} apart needs; lower history, horizon or frame_skip"
            )

    @property
    def length(self) -> int:
        """Frames per window."""
        return self.history + self.horizon

    def __len__(self) -> int:
        return len(self.index)

    def collate(self, items: Sequence[int]) -> LatentBatch:
        """The windows at these positions of :attr:`index`, stacked."""
        k, steps = self.skip, torch.arange(self.length) * self.skip
        zs: list[torch.Tensor] = []
        codes: list[torch.Tensor] = []
        frames: list[torch.Tensor] = []
        arrays: dict[str, list[torch.Tensor]] = {name: [] for name in self.array_names}
        ids, starts = [], []
        for item in items:
            v, start = self.index[item]
            video = self.videos[v]
            positions = start + steps
            zs.append(video.z[positions])
            if video.codes is not None:
                codes.append(video.codes[positions])
            frames.append(video.frame_indices[positions])
            for name in self.array_names:
                rows = video.arrays[name][start : start + self.length * k]
                arrays[name].append(rows.reshape(self.length, -1))
            ids.append(video.video_id)
            starts.append(start)
        return LatentBatch(
            ids,
            starts,
            torch.stack(zs).float(),
            torch.stack(frames),
            {name: torch.stack(rows).float() for name, rows in arrays.items()},
            torch.stack(codes) if codes else None,
        )

    def batches(
        self, batch_size: int, seed: int = 0, start_batch: int = 0, rank: int = 0, world_size: int = 1
    ) -> Iterator[LatentBatch]:
        """Endless shuffled global batches from ``start_batch`` on; this rank's share of each."""
        if batch_size < 1 or batch_size % world_size or not 0 <= rank < world_size:
            raise ValueError(
                f"batch_size {batch_size} must be a positive multiple of world_size {world_size} (rank {rank})"
            )
        n = len(self.index)
        epoch, order = -1, torch.empty(0, dtype=torch.long)
        batch = start_batch
        while True:
            items = []
            for position in range(batch * batch_size + rank, (batch + 1) * batch_size, world_size):
                if position // n != epoch:
                    epoch = position // n
                    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
                    order = torch.randperm(n, generator=generator)
                items.append(int(order[position % n]))
            yield self.collate(items)
            batch += 1

    def in_order(self, batch_size: int) -> Iterator[LatentBatch]:
        """Every window once, in video and start order."""
        for first in range(0, len(self.index), batch_size):
            yield self.collate(range(first, min(first + batch_size, len(self.index))))
