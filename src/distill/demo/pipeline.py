"""The demo pipeline: the same commands a user runs, on procedurally generated data.

Each step is a real subprocess (the scripts under ``scripts/``, torchrun for extraction and
training), printed before it runs, so the demo doubles as a worked example of the CLI.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from distill.synthetic import write_image_folder, write_video

REPO = Path(__file__).resolve().parents[3]
TEACHERS = ("clip", "dinov2", "mae", "sam", "depth_anything")


@dataclass(frozen=True)
class DemoConfig:
    """What the demo builds; the defaults finish in a few minutes on 2 CPU cores with tiny teachers."""

    output: Path
    teacher_source: str = "tiny"  # tiny | hub
    weights: tuple[tuple[str, str], ...] = ()  # (teacher, hub id / dir / file) for source=hub
    image_size: int = 64  # canonical view side
    model: str = "tiny"  # a configs/model option
    classes: int = 8
    per_class: int = 40
    video_frames: int = 24
    video_fps: int = 8
    steps: int = 600
    batch_size: int = 8  # per rank
    processes: int = 2  # torchrun processes for extraction and training
    storage: str = "int8"


@dataclass
class StepResult:
    name: str
    command: str
    seconds: float


@dataclass
class DemoResult:
    config: DemoConfig
    steps: list[StepResult] = field(default_factory=list)

    @property
    def dataset(self) -> Path:
        return self.config.output / "data" / "demo"

    @property
    def stats_dir(self) -> Path:
        """Where distill-stats writes and distill-check / the trainer look by default."""
        return self.dataset / "feature_stats"

    @property
    def run_dir(self) -> Path:
        return self.config.output / "run"

    @property
    def student(self) -> Path:
        """The final student folder the trainer writes into its run dir."""
        return self.run_dir / "student"

    @property
    def decoded(self) -> Path:
        return self.config.output / "decoded"

    @property
    def evaluation(self) -> Path:
        """distill-evaluate's report.json / report.md / grid.png on the held-out images."""
        return self.config.output / "evaluation"


def script(path: str) -> list[str]:
    return [sys.executable, str(REPO / "scripts" / path)]


def torchrun(processes: int, path: str) -> list[str]:
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
    ]
    return [*launcher, str(REPO / "scripts" / path)]


HUB_HINT = (
    "real teachers load their weights from a hub or a local mirror: on an offline machine pass each one, e.g. "
    "python -m distill.demo --teachers hub --weights dinov2=/models/dinov2-large "
    "--weights sam=vit_h:/models/sam_vit_h_4b8939.pth ... (README, 'Teachers')"
)


def run_step(result: DemoResult, name: str, command: Sequence[str], hint: str = "") -> None:
    """Run one command in the repo root, echo it, and stop the demo with its output (and ``hint``) if it fails."""
    shown = shlex.join(command).replace(sys.executable, "python")
    print(f"\n[demo] {name}\n  $ {shown}", flush=True)
    started = time.perf_counter()
    completed = subprocess.run(list(command), cwd=REPO, check=False)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        advice = f"\n[demo] {hint}" if hint else ""
        raise SystemExit(
            f"[demo] step '{name}' failed (exit {completed.returncode}); its output is above{advice}"
        )
    result.steps.append(StepResult(name, shown, seconds))
    print(f"[demo] {name}: {seconds:.1f} s", flush=True)


def generate_media(cfg: DemoConfig) -> tuple[Path, Path]:
    """A procedural image folder (ImageNet-style classes) and a short procedural video."""
    images = cfg.output / "media" / "images"
    write_image_folder(images, classes=cfg.classes, per_class=cfg.per_class, size=(120, 96), seed=0)
    video = write_video(
        cfg.output / "media" / "clip.mp4", frames=cfg.video_frames, size=(96, 96), fps=cfg.video_fps
    )
    return images, video


def run_demo(cfg: DemoConfig) -> DemoResult:
    result = DemoResult(cfg)
    started = time.perf_counter()
    images, video = generate_media(cfg)
    result.steps.append(
        StepResult("generate images and video", "distill.synthetic", time.perf_counter() - started)
    )
    weights_flags = [f"--weights={name}={value}" for name, value in cfg.weights]
    run_step(
        result,
        "organize images into shards",
        [
            *script("preprocessing/organize_webdataset.py"),
            str(images),
            str(result.dataset),
            f"--size={cfg.image_size}",
            "--samples-per-shard=8",
            "--val-fraction=0.15",
            "--overwrite",
        ],
    )
    run_step(
        result,
        f"extract teacher features ({cfg.processes} processes)",
        [
            *torchrun(cfg.processes, "preprocessing/feature_extraction.py"),
            str(result.dataset),
            "--teachers",
            *TEACHERS,
            f"--source={cfg.teacher_source}",
            f"--storage={cfg.storage}",
            *weights_flags,
            "--no-progress",
        ],
        hint=HUB_HINT if cfg.teacher_source == "hub" else "",
    )
    run_step(
        result,
        "feature statistics",
        [
            *script("preprocessing/calc_feature_stats.py"),
            str(result.dataset),
        ],
    )
    run_step(
        result,
        "check the dataset",
        [*script("preprocessing/check_dataset.py"), str(result.dataset)],
    )
    run_step(
        result,
        f"train the student ({cfg.processes} processes)",
        [
            *torchrun(cfg.processes, "train_rvfm.py"),
            f"dataset.root={result.dataset.parent}",
            f"dataset.name={result.dataset.name}",
            f"dataset.num_streams={cfg.processes}",
            "dataset.num_workers=0",
            "teachers=all5",
            f"teacher_source={cfg.teacher_source}",
            *[f"teachers.{name}.weights={value}" for name, value in cfg.weights],
            f"model={cfg.model}",
            f"training.steps={cfg.steps}",
            f"training.batch_size={cfg.batch_size}",
            "training.lr=1e-3",
            f"training.warmup_steps={max(1, cfg.steps // 10)}",
            f"training.val_every={max(1, cfg.steps // 5)}",
            f"training.checkpoint_every={cfg.steps}",
            "logging.log_every=5",
            "logging.wandb.mode=disabled",
            f"output_dir={result.run_dir.parent}",
            f"run_name={result.run_dir.name}",
        ],
    )
    run_step(
        result,
        "evaluate what z carries (held-out images, against the mean image and PCA of the same width)",
        [
            *script("evaluate_latents.py"),
            str(result.student),
            str(result.dataset),
            f"--output={result.evaluation}",
            "--grid-frames=6",
        ],
    )
    run_step(
        result,
        "decode the video: student vs teachers",
        [
            *script("decoding/decoding_example.py"),
            f"--checkpoint={result.student}",
            f"--media={video}",
            "--compare-teachers",
            f"--teachers-source={cfg.teacher_source}",
            *[f"--teacher-weights={name}={value}" for name, value in cfg.weights],
            f"--output={result.decoded}",
            *mask_flags(cfg.teacher_source),
        ],
    )
    return result


def mask_flags(teacher_source: str) -> list[str]:
    """Random tiny SAM is never confident: keep every mask it proposes, over a coarse point grid."""
    if teacher_source != "tiny":
        return []
    return ["--points-per-side=8", "--pred-iou-thresh=0", "--stability-score-thresh=0"]
