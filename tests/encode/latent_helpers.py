"""A small frames dataset with planted per-frame actions and a tiny random-init student, shared by the latent tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.models import Student, StudentConfig
from distill.preprocess.subsample_videos import VideoConfig, subsample_videos
from distill.stats import FeatureStats
from distill.synthetic import write_video
from distill.teachers import load_teacher

SIZE = 32
FRAMES = (9, 7, 12)  # frames per video: a/b/c


def planted_action(video: int, frame: int) -> list[float]:
    """Action row of frame ``frame`` of video ``video``: unique per frame, so misalignment shows."""
    return [video * 100.0 + frame, -float(frame)]


def write_frames_dataset(root: Path, frames: tuple[int, ...] = FRAMES) -> Path:
    """Videos v0, v1, ... with ``.npz`` sidecars of planted actions -> a frames dataset (5 frames per shard)."""
    videos = root / "videos"
    for number, count in enumerate(frames):
        write_video(videos / f"v{number}.mp4", frames=count, size=(64, 64), fps=8, seed=number)
        action = np.array([planted_action(number, t) for t in range(count)], dtype=np.float32)
        np.savez(videos / f"v{number}.npz", action=action, state=np.arange(count, dtype=np.float32)[:, None])
    dataset = root / "frames"
    subsample_videos(VideoConfig(videos, dataset, size=SIZE, samples_per_shard=5, every_n=1))
    return dataset


def save_tiny_student(directory: Path, seed: int = 0, **overrides: Any) -> Student:
    """A random-init tiny student of the tiny DINOv2 teacher (PCA-decodable) saved as a checkpoint;
    ``overrides`` are further StudentConfig fields (a quantiser)."""
    spec = load_teacher("dinov2", "tiny").spec
    config = StudentConfig.from_preset(
        "tiny", {"dinov2": spec}, image_size=SIZE, patch_size=8, d_z=8, **overrides
    )
    torch.manual_seed(seed)
    model = Student(config, load_pretrained=False).eval()
    assert spec.cls_channels is not None
    zeros, ones = torch.zeros(spec.channels), torch.ones(spec.channels)
    cls = torch.zeros(spec.cls_channels), torch.ones(spec.cls_channels)
    stats = FeatureStats("dinov2", zeros, ones, *cls, count=1)
    model.save_pretrained(directory, {"dinov2": stats})
    return model
