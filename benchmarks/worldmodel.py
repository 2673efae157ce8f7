"""World model vs copy-last-frame on held-out PushT episodes, on CPU: z cosine and pixel PSNR per horizon.

PushT episodes (the [sim] extra) -> frames -> latents of a random-init tiny student (tiny DINOv2 specs) ->
the latent world model trained for ``--steps`` -> open-loop rollouts on the val episodes. JSON out.
Usage: ``python benchmarks/worldmodel.py --output benchmarks/results/worldmodel.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from distill.features import TeacherSpec
from distill.models import Student, StudentConfig
from distill.preprocess.subsample_videos import VideoConfig, subsample_videos
from distill.simulate import EpisodeConfig, render_episodes
from distill.stats import FeatureStats
from distill.teachers import load_teacher
from distill.worldmodel import run_worldmodel_demo


def random_student(directory: Path, image_size: int) -> None:
    """A random-init tiny student predicting the tiny DINOv2 teacher, saved with identity stats."""
    spec: TeacherSpec = load_teacher("dinov2", "tiny").spec
    assert spec.cls_channels is not None
    config = StudentConfig.from_preset("tiny", {"dinov2": spec}, image_size=image_size)
    torch.manual_seed(0)
    stats = FeatureStats(
        "dinov2",
        torch.zeros(spec.channels),
        torch.ones(spec.channels),
        torch.zeros(spec.cls_channels),
        torch.ones(spec.cls_channels),
        count=1,
    )
    Student(config, load_pretrained=False).save_pretrained(directory, {"dinov2": stats})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=None, help="keep the data and rollouts here")
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1500)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="wm-bench-"))
    started = time.perf_counter()
    render_episodes(EpisodeConfig(work / "videos", args.episodes, args.frames, 96, seed=11))
    counts = subsample_videos(
        VideoConfig(
            work / "videos", work / "frames", size=args.size, every_n=1, val_fraction=0.25, overwrite=True
        )
    )
    random_student(work / "student", args.size)
    metrics = run_worldmodel_demo(work / "frames", work / "student", work / "run", steps=args.steps)
    result = {
        "student": "tiny preset, random init (not trained)",
        "frames": counts,
        "episodes": args.episodes,
        "frames_per_episode": args.frames,
        "image_size": args.size,
        "steps": args.steps,
        "seconds": round(time.perf_counter() - started, 1),
        **metrics.to_dict(),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
