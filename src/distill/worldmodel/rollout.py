"""Open-loop rollouts on held-out latents: z cosine and pixel PSNR against the horizon, beside copy-last-frame.

For every window of ``history + horizon`` z's of the split, the model sees the first ``history`` true
z's and every action, and imagines the next ``horizon`` z's on its own predictions. The baseline
repeats the last context z. Pixel PSNR (when the student has a pixel head and the frames dataset the
latents came from is at hand) compares the student's pixels decoded from each z with the true frame;
``encoded`` is the ceiling: the pixels decoded from the true frame's own z. ``centered_cosine`` measures
the cosine around the training split's mean z (the model's normalisation buffer, the same for both
predictors): when z carries a large constant part (a random-init student), raw cosines all sit near 1
and only the centred one shows which predictor follows the motion.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from distill.data.clips import video_clips
from distill.data.latent_clips import LatentBatch, LatentClips
from distill.models.student import Student
from distill.worldmodel.model import LatentWorldModel

PREDICTORS = ("world_model", "copy_last")


@dataclass
class RolloutMetrics:
    horizon: int
    windows: int
    cosine: dict[str, list[float]]  # predictor -> mean z cosine at horizons 1..N
    centered_cosine: dict[str, list[float]]  # the same around the training mean z
    psnr: dict[str, list[float]] = field(default_factory=dict)  # predictor (and "encoded") -> mean dB

    def to_dict(self) -> dict[str, object]:
        return {
            "horizon": self.horizon,
            "windows": self.windows,
            "cosine": self.cosine,
            "centered_cosine": self.centered_cosine,
            "psnr": self.psnr,
        }


def open_clips(model: LatentWorldModel, latents: Path, split: str, horizon: int) -> LatentClips:
    """The held-out windows this model can roll out: its history, frame skip and action array."""
    config = model.config
    arrays = [config.action] if config.action else []
    return LatentClips(latents, split, config.history, horizon, config.frame_skip, arrays=arrays)


def imagine(model: LatentWorldModel, batch: LatentBatch, horizon: int) -> dict[str, torch.Tensor]:
    """predictor -> imagined z [B, horizon, d_z] for a batch of windows (context = the first H z's)."""
    history = model.config.history
    device = model.z_mean.device
    z = batch.z.to(device)
    actions = batch.arrays[model.config.action].to(device) if model.config.action else None
    context = z[:, :history]
    return {
        "world_model": model.rollout(context, actions, horizon),
        "copy_last": context[:, -1:].expand(-1, horizon, -1),
    }


def true_frames(frames_dataset: Path, split: str, clips: LatentClips) -> dict[str, torch.Tensor]:
    """video id -> uint8 [T, 3, S, S] of every frame the latents hold, checked frame index by frame index."""
    wanted = {video.video_id: video for video in clips.videos}
    out = {}
    for clip in video_clips(frames_dataset, split, clip_len=2**31 - 1, allow_short=True):
        video = wanted.get(clip.video_id)
        if video is None:
            continue
        if clip.frame_indices != video.frame_indices.tolist():
            raise ValueError(
                f"{frames_dataset} video {clip.video_id!r} holds frames {clip.frame_indices[:5]}..., the "
                f"latents {video.frame_indices[:5].tolist()}...; re-encode the latents from this dataset"
            )
        out[clip.video_id] = clip.frames
    missing = sorted(set(wanted) - set(out))
    if missing:
        raise ValueError(f"{frames_dataset} split {split!r} lacks the videos {missing[:5]} of the latents")
    return out


def _psnr(pixels: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per image PSNR in dB of float [B, 3, S, S] pixels in [0, 1] against uint8 frames."""
    mse = F.mse_loss(pixels.clamp(0, 1), truth.float() / 255, reduction="none").flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-10))


def rollout_metrics(
    model: LatentWorldModel,
    clips: LatentClips,
    horizon: int,
    student: Student | None = None,
    frames: Mapping[str, torch.Tensor] | None = None,
    batch_size: int = 64,
) -> RolloutMetrics:
    """Mean z cosine (and pixel PSNR with a pixel-head student and the true frames) per horizon step."""
    history, skip = model.config.history, model.config.frame_skip
    with_pixels = student is not None and student.pixel_head is not None and frames is not None
    cosine = {name: torch.zeros(horizon, dtype=torch.float64) for name in PREDICTORS}
    centered = {name: torch.zeros(horizon, dtype=torch.float64) for name in PREDICTORS}
    psnr = {name: torch.zeros(horizon, dtype=torch.float64) for name in (*PREDICTORS, "encoded")}
    windows = 0
    for batch in clips.in_order(batch_size):
        imagined = imagine(model, batch, horizon)
        truth = batch.z[:, history:].to(model.z_mean.device)
        for name, z in imagined.items():
            cosine[name] += F.cosine_similarity(z, truth, dim=-1).sum(0).double().cpu()
            around = F.cosine_similarity(z - model.z_mean, truth - model.z_mean, dim=-1)
            centered[name] += around.sum(0).double().cpu()
        if with_pixels:
            assert student is not None and frames is not None
            targets = torch.stack(
                [
                    frames[video][[start + (history + h) * skip for h in range(horizon)]]
                    for video, start in zip(batch.video_ids, batch.starts, strict=True)
                ]
            )
            for name, z in {**imagined, "encoded": truth}.items():
                for h in range(horizon):
                    with torch.no_grad():
                        pixels = student.predict(z[:, h].to(next(student.parameters()).device)).pixels
                    assert pixels is not None
                    psnr[name][h] += _psnr(pixels.cpu(), targets[:, h]).sum().double()
        windows += batch.z.shape[0]
    return RolloutMetrics(
        horizon,
        windows,
        {name: (values / windows).tolist() for name, values in cosine.items()},
        {name: (values / windows).tolist() for name, values in centered.items()},
        {name: (values / windows).tolist() for name, values in psnr.items()} if with_pixels else {},
    )
