"""Decoded rollouts: the imagined z's and the true frames' z's decoded side by side, as MP4 and a PNG strip.

The ground-truth row decodes each true frame's own z (what the student makes of the real frame), so
the two rows differ only by the world model's error; both share one PCA basis (fitted on the truth).
The strip shows, per horizon step, the true frame and the pixels (the student's pixel head, else the
first PCA map) decoded from the true z, the world model's z and the copy-last-frame z.
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from distill.data.latent_clips import LatentClips
from distill.decode import PIXEL_HEAD, DecodedFrames, decode_z, render, write_mp4, write_png
from distill.decode.grid import GridRow, cell_size, compose_grid
from distill.models.student import Student
from distill.teachers import Teacher
from distill.worldmodel.model import LatentWorldModel
from distill.worldmodel.rollout import imagine


def _cells(decoded: DecodedFrames) -> list[np.ndarray]:
    """One picture per frame: the pixel head's pixels, else the first PCA map."""
    if PIXEL_HEAD in decoded.pixels:
        images = decoded.pixels[PIXEL_HEAD].clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1)
    else:
        images = next(iter(decoded.pca.values())).mul(255).round().byte()
    return [image.numpy() for image in images]


def write_rollout_videos(
    model: LatentWorldModel,
    clips: LatentClips,
    horizon: int,
    student: Student,
    frames: Mapping[str, torch.Tensor],
    teachers: Mapping[str, Teacher],
    output: Path,
    videos: int = 2,
) -> list[Path]:
    """For the first window of the first ``videos`` videos: ``rollout_<video>.mp4`` and ``rollout_<video>.png``."""
    history, skip = model.config.history, model.config.frame_skip
    firsts = [i for i, (_, start) in enumerate(clips.index) if start == 0][:videos]
    written = []
    for item in firsts:
        batch = clips.collate([item])
        video_id = batch.video_ids[0]
        imagined = {name: z[0].cpu() for name, z in imagine(model, batch, horizon).items()}
        truth = batch.z[0, history:]
        images = frames[video_id][[(history + h) * skip for h in range(horizon)]]
        encoded = decode_z(student, truth, None, teachers)
        decoded = {
            name: decode_z(student, z, None, teachers, pca_bases=encoded.pca_bases)
            for name, z in imagined.items()
        }
        grids = render(
            decoded["world_model"],
            encoded,
            images,
            title=f"{video_id}: world model after {history} true frames",
            labels=("world model", "truth (z)"),
        )
        written.append(write_mp4(grids, output / f"rollout_{video_id}.mp4", Fraction(2)))
        truth_cells = [image.permute(1, 2, 0).numpy() for image in images]
        rows = [
            GridRow("frame", truth_cells),
            GridRow("truth (z)", _cells(encoded)),
            GridRow("world model", _cells(decoded["world_model"])),
            GridRow("copy last", _cells(decoded["copy_last"])),
        ]
        strip = compose_grid(
            [f"t+{h + 1}" for h in range(horizon)],
            rows,
            cell_size(student.config.image_size, 96),
            f"{video_id}: open-loop rollout",
        )
        written.append(write_png(strip, output / f"rollout_{video_id}.png"))
    return written
