"""The rollout command's work: load the world model (and student), score held-out rollouts, decode a few."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from distill.data.latents import CheckpointRef
from distill.decode import load_decoder_teachers, teachers_for
from distill.decode.decoders import TARGETS
from distill.io import atomic_write_text
from distill.models.student import Student
from distill.worldmodel.model import load_world_model
from distill.worldmodel.rollout import RolloutMetrics, open_clips, rollout_metrics, true_frames
from distill.worldmodel.visualize import write_rollout_videos


@dataclass(frozen=True)
class RolloutConfig:
    model: Path  # world-model checkpoint folder
    latents: Path  # latent dataset; its manifest names the frames dataset for PSNR and videos
    output: Path
    split: str = "val"
    horizon: int = 5
    student: Path | None = None  # the student the latents came from (PSNR, decoded videos)
    videos: int = 2
    teachers_source: Literal["auto", "tiny", "hub"] = "auto"
    device: str = "cpu"
    teacher_weights: tuple[tuple[str, str], ...] = ()  # (teacher, hub id / dir / file) for the decoders


def evaluate_rollouts(cfg: RolloutConfig) -> RolloutMetrics:
    """Metrics to ``<output>/metrics.json``; with a student, decoded rollouts beside them."""
    model, fingerprint = load_world_model(cfg.model, cfg.device)
    clips = open_clips(model, cfg.latents, cfg.split, cfg.horizon)
    if clips.manifest.checkpoint.fingerprint != fingerprint:
        raise ValueError(
            f"{cfg.model} was trained on latents of student {fingerprint}, {cfg.latents} holds "
            f"{clips.manifest.checkpoint.fingerprint}; encode with the same student or retrain"
        )
    student = frames = None
    if cfg.student is not None:
        student = Student.from_pretrained(cfg.student, device=cfg.device).eval()
        ref = CheckpointRef.of(cfg.student, student.config.d_z, student.config.image_size)
        if ref.fingerprint != fingerprint:
            raise ValueError(
                f"{cfg.student} ({ref.fingerprint}) is not the student of {cfg.latents} ({fingerprint})"
            )
        frames = true_frames(Path(clips.manifest.source), cfg.split, clips)
    metrics = rollout_metrics(model, clips, cfg.horizon, student, frames)
    cfg.output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cfg.output / "metrics.json", json.dumps(metrics.to_dict(), indent=2) + "\n")
    if student is not None and frames is not None and cfg.videos > 0:
        names = teachers_for(student.config.teachers, TARGETS, compare=False)
        teachers = load_decoder_teachers(
            student.config.teachers,
            names,
            cfg.teachers_source,
            dict(cfg.teacher_weights),
            device=cfg.device,
            checkpoint=str(cfg.student),
        )
        write_rollout_videos(model, clips, cfg.horizon, student, frames, teachers, cfg.output, cfg.videos)
    return metrics
