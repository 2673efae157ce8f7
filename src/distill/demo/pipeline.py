"""The demo pipeline: the same commands a user runs, on PushT episodes from a real simulator.

Each step is a real subprocess (the scripts under ``scripts/``, torchrun for extraction and
training), printed before it runs, so the demo doubles as a worked example of the CLI. The data are
rendered episodes of gym-pusht (the ``sim`` extra ``make setup`` installs): two moving objects whose
positions the frames' metadata carry, so the evaluation can ask how well z reads them.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from distill.data.manifest import IMAGES_DIR, load_manifest
from distill.data.shards import iter_shard

REPO = Path(__file__).resolve().parents[3]
TEACHERS = ("clip", "dinov2", "mae", "sam", "depth_anything")
WORLD_MODEL_HISTORY = 4  # distill-worldmodel train's default context
# The world-model steps run small models: one thread is as fast as two on idle cores, and with both cores
# busy with other work, two threads waiting on each other took 84 s for the 300 training steps against
# 8 s with one (encoding: 21 s against 12 s).
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@dataclass(frozen=True)
class DemoConfig:
    """What the demo builds; the defaults finish in a few minutes on 2 CPU cores with tiny teachers."""

    output: Path
    teacher_source: str = "tiny"  # tiny | hub
    weights: tuple[tuple[str, str], ...] = ()  # (teacher, hub id / dir / file) for source=hub
    image_size: int = 64  # canonical view side
    model: str = "tiny"  # a configs/model option (preset=sim sets the rest of the recipe)
    episodes: int = 32  # PushT episodes; about a fifth go to the held-out split, by name
    frames: int = 32  # frames per episode, 10 per simulated second
    render_size: int = 96  # rendered frame side (LeRobot's PushT uses 96)
    val_fraction: float = 0.2
    steps: int = 300
    batch_size: int = 32  # per rank
    # pixel_mse x 4 (the keypoint sprites' search scales with it): in a run this short, the pixel row is
    # what shows z's content
    pixel_weight: float = 4.0
    processes: int = 2  # torchrun processes for extraction and training
    storage: str = "int8"
    world_model_steps: int = 300  # the latent world model's training steps (0: no world-model step)
    horizon: int = 5  # imagined steps per held-out rollout (after a context of WORLD_MODEL_HISTORY z's)


@dataclass
class StepResult:
    name: str
    command: str
    seconds: float


@dataclass
class DemoResult:
    config: DemoConfig
    steps: list[StepResult] = field(default_factory=list)
    held_out: Path | None = None  # the held-out episode the decode step draws

    @property
    def videos(self) -> Path:
        """distill-simulate's episodes: episode_NNNNNN.mp4 with its .npz of per-frame state, action and heading."""
        return self.config.output / "media" / "pusht"

    @property
    def dataset(self) -> Path:
        return self.config.output / "data" / "pusht"

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
        """distill-evaluate's report.json / report.md / grid.png on the held-out episodes."""
        return self.config.output / "evaluation"

    @property
    def latents(self) -> Path:
        """distill-encode's latent dataset: z of every frame of every episode, with its state, action and heading."""
        return self.config.output / "latents"

    @property
    def world_model(self) -> Path:
        return self.config.output / "worldmodel"

    @property
    def rollouts(self) -> Path:
        """distill-worldmodel rollout's metrics.json and the decoded rollout (MP4 and PNG strip)."""
        return self.config.output / "rollouts"

    @property
    def seconds(self) -> float:
        return sum(step.seconds for step in self.steps)


def module(name: str) -> list[str]:
    return [sys.executable, "-m", name]


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
SIM_HINT = "the simulator is the 'sim' extra: make setup installs it (or pip install -e '.[sim]')"


def run_step(
    result: DemoResult,
    name: str,
    command: Sequence[str],
    hint: str = "",
    env: Mapping[str, str] | None = None,
) -> None:
    """Run one command in the repo root (with ``env`` added to the environment), echo it, and stop the demo
    with its output (and ``hint``) if it fails."""
    variables = [f"{key}={value}" for key, value in (env or {}).items()]
    shown = shlex.join([*variables, *command]).replace(sys.executable, "python")
    print(f"\n[demo] {name}\n  $ {shown}", flush=True)
    started = time.perf_counter()
    completed = subprocess.run(list(command), cwd=REPO, env={**os.environ, **(env or {})}, check=False)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        advice = f"\n[demo] {hint}" if hint else ""
        raise SystemExit(
            f"[demo] step '{name}' failed (exit {completed.returncode}); its output is above{advice}"
        )
    result.steps.append(StepResult(name, shown, seconds))
    print(f"[demo] {name}: {seconds:.1f} s", flush=True)


def held_out_video(result: DemoResult) -> Path:
    """The first video subsample_videos put in the val split: an episode the student never trained on."""
    manifest = load_manifest(result.dataset)
    if "val" not in manifest.splits:
        raise SystemExit(
            f"[demo] {result.dataset}: no episode fell into the held-out split "
            f"({result.config.episodes} episodes, val fraction {result.config.val_fraction}); "
            "render more episodes (DemoConfig.episodes)"
        )
    shard = result.dataset / IMAGES_DIR / manifest.split("val").shards[0].name
    first = next(iter_shard(shard))
    return result.videos / json.loads(first.files["json"])["source"]


def clear_previous_run(result: DemoResult) -> None:
    """Remove the training run a previous demo left in the same output folder.

    Every other step overwrites its outputs, but the trainer rightly refuses to start a fresh run in a
    folder that holds checkpoints; the demo owns this one, so a second ``make demo`` starts over.
    """
    if result.run_dir.exists():
        print(f"[demo] removing the previous demo run {result.run_dir}", flush=True)
        shutil.rmtree(result.run_dir)


def check_world_model_fits(cfg: DemoConfig) -> None:
    """A rollout needs a context and ``horizon`` more frames of one episode: refuse before any step runs."""
    needed = WORLD_MODEL_HISTORY + cfg.horizon
    if cfg.world_model_steps > 0 and cfg.frames < needed:
        raise SystemExit(
            f"[demo] the world-model step needs episodes of at least {needed} frames ({WORLD_MODEL_HISTORY} "
            f"of context + horizon {cfg.horizon}), got {cfg.frames}: render longer episodes (--frames) "
            "or leave the step out (DemoConfig.world_model_steps=0)"
        )


def run_demo(cfg: DemoConfig) -> DemoResult:
    check_world_model_fits(cfg)
    result = DemoResult(cfg)
    clear_previous_run(result)
    weights_flags = [f"--weights={name}={value}" for name, value in cfg.weights]
    run_step(
        result,
        "simulate PushT episodes (video + per-frame state, action and heading)",
        [
            *script("simulate_pusht.py"),
            str(result.videos),
            f"--episodes={cfg.episodes}",
            f"--frames={cfg.frames}",
            f"--size={cfg.render_size}",
        ],
        hint=SIM_HINT,
    )
    run_step(
        result,
        "cut the videos into frame shards (whole episodes held out)",
        [
            *script("preprocessing/subsample_videos.py"),
            str(result.videos),
            str(result.dataset),
            "--every-n=1",
            f"--size={cfg.image_size}",
            f"--samples-per-shard={cfg.frames}",
            f"--val-fraction={cfg.val_fraction}",
            "--overwrite",
        ],
    )
    result.held_out = held_out_video(result)
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
            # the tiny recipe (keypoints, 96-wide decoder, CPU schedule) only for the tiny student
            *(["preset=sim"] if cfg.teacher_source == "tiny" else ["training.lr=1e-3"]),
            f"model={cfg.model}",
            f"training.steps={cfg.steps}",
            f"training.batch_size={cfg.batch_size}",
            f"training.warmup_steps={max(1, cfg.steps // 10)}",
            f"training.val_every={max(1, cfg.steps // 4)}",
            f"training.checkpoint_every={cfg.steps}",
            f"training.loss.pixel_mse={cfg.pixel_weight:g}",
            "logging.log_every=10",
            "logging.wandb.mode=disabled",
            f"output_dir={result.run_dir.parent}",
            f"run_name={result.run_dir.name}",
        ],
    )
    run_step(
        result,
        "evaluate what z carries (held-out episodes, against the mean image and PCA of the same width)",
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
        "decode a held-out episode: student vs teachers",
        [
            *script("decoding/decoding_example.py"),
            f"--checkpoint={result.student}",
            f"--media={result.held_out}",
            "--compare-teachers",
            f"--teachers-source={cfg.teacher_source}",
            *[f"--teacher-weights={name}={value}" for name, value in cfg.weights],
            f"--output={result.decoded}",
            *mask_flags(cfg.teacher_source),
        ],
    )
    if cfg.world_model_steps > 0:
        run_world_model_steps(result)
    return result


def run_world_model_steps(result: DemoResult) -> None:
    """Every episode to z, a small world model on the train episodes' z and actions, held-out rollouts."""
    cfg = result.config
    run_step(
        result,
        "encode every episode to z (a latent dataset with each frame's state, action and heading)",
        [
            *script("encode_latents.py"),
            str(result.student),
            str(result.dataset),
            str(result.latents),
            "--overwrite",
        ],
        env=ONE_THREAD,
    )
    run_step(
        result,
        f"train a world model on the train episodes' z and actions ({cfg.world_model_steps} steps)",
        [
            *module("distill.worldmodel"),
            "train",
            str(result.latents),
            str(result.world_model),
            f"--history={WORLD_MODEL_HISTORY}",
            f"--steps={cfg.world_model_steps}",
            "--batch-size=32",
        ],
        env=ONE_THREAD,
    )
    run_step(
        result,
        "roll the world model out on the held-out episodes, against copy-last-frame",
        [
            *module("distill.worldmodel"),
            "rollout",
            str(result.world_model),
            str(result.latents),
            str(result.rollouts),
            "--split=val",
            f"--horizon={cfg.horizon}",
            f"--student={result.student}",
            "--videos=1",
            f"--teachers-source={cfg.teacher_source}",
            *[f"--teacher-weights={name}={value}" for name, value in cfg.weights],
        ],
        env=ONE_THREAD,
    )


def mask_flags(teacher_source: str) -> list[str]:
    """Random tiny SAM is never confident: keep every mask it proposes, over a coarse point grid."""
    if teacher_source != "tiny":
        return []
    return ["--points-per-side=4", "--pred-iou-thresh=0", "--stability-score-thresh=0"]
