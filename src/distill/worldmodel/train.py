"""Train the latent world model on a latent dataset: teacher-forced next-z prediction on LatentClips windows.

Each step draws a batch of windows of ``history + 1`` z's (``frame_skip`` apart) with their actions;
position t predicts z_{t+1} from z_0..z_t and a_0..a_t. The loss is the mean squared error in the
normalised z space plus ``1 - cosine`` (the rollout metric), over every position; with
``target="codes"`` (latents of a quantised student) it is the cross-entropy of the next frame's codes.

Checkpoints are the student trainer's (``distill.checkpoints``): ``<output>/checkpoints/step_N/`` holds
the world-model folder, AdamW's state, the generators and the step. The schedule is a function of
the step and the windows of batch b depend only on b and the seed, so ``resume`` from step N ends
with the weights of a run that never stopped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from distill import rng
from distill.checkpoints import (
    Checkpoint,
    TrainerState,
    latest_checkpoint,
    read_checkpoint,
    remove_incomplete,
    write_checkpoint,
)
from distill.data.latent_clips import LatentClips
from distill.data.latents import read_code_table
from distill.io import atomic_write_text
from distill.optim import WarmupCosine, build_optimizer, load_optimizer_state
from distill.worldmodel.config import Target, WorldModelConfig
from distill.worldmodel.model import LatentWorldModel, load_world_model, save_world_model

log = logging.getLogger(__name__)
MODEL_DIR = "worldmodel"  # the world-model folder inside a checkpoint directory
LOG_FILE = "train_log.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    latents: Path  # a latent dataset (distill-encode)
    output: Path  # the world-model checkpoint folder
    split: str = "train"
    action: str | None = "action"  # None trains without actions
    history: int = 4
    frame_skip: int = 1
    width: int = 128
    depth: int = 2
    heads: int = 4
    dropout: float = (
        0.1  # with weight_decay, keeps the small model from memorising its episodes (docs/decisions.md)
    )
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    seed: int = 0
    device: str = "cpu"
    log_every: int = 50
    target: Target = "z"  # z: next-z regression | codes: cross-entropy over the next frame's codes
    checkpoint_every: int = 0  # write <output>/checkpoints/step_N every this many steps (0: none)
    keep_last: int = 2  # checkpoints kept
    resume: bool = False  # continue from the latest checkpoint in <output> (a fresh start when none)

    def __post_init__(self) -> None:
        if min(self.steps, self.batch_size, self.log_every) < 1 or self.checkpoint_every < 0:
            raise ValueError(f"steps, batch_size and log_every must be >= 1, checkpoint_every >= 0: {self}")
        if self.checkpoint_every % self.log_every:
            raise ValueError(
                f"checkpoint_every {self.checkpoint_every} must be a multiple of log_every {self.log_every} "
                "(a checkpoint holds the loss log up to its step)"
            )


def next_z_loss(model: LatentWorldModel, z: torch.Tensor, actions: torch.Tensor | None) -> torch.Tensor:
    """Teacher forcing on windows z [B, H + 1, d_z]: predict z[:, 1:] from z[:, :-1] (and actions)."""
    history = z.shape[1] - 1
    predicted = model(z[:, :history], None if actions is None else actions[:, :history])
    target = z[:, 1:]
    mse = F.mse_loss((predicted - target) / model.z_std, torch.zeros_like(target))
    return mse + (1 - F.cosine_similarity(predicted, target, dim=-1)).mean()


def next_code_loss(
    model: LatentWorldModel, z: torch.Tensor, codes: torch.Tensor, actions: torch.Tensor | None
) -> torch.Tensor:
    """Teacher forcing on windows z [B, H + 1, d_z] with their codes [B, H + 1, n]: cross-entropy of codes[:, 1:].

    Each code's logits cover only its own vocabulary (the rest is -inf); a target outside it is refused
    rather than scored as an infinite loss."""
    if model.layout is None:
        raise ValueError("this world model regresses z (target='z'); it has no code logits")
    history = z.shape[1] - 1
    targets = codes[:, 1:]
    model.layout.check(targets)
    logits = model.code_logits(z[:, :history], None if actions is None else actions[:, :history])
    return F.cross_entropy(logits.flatten(0, 2), targets.flatten())


def _build(cfg: TrainConfig, clips: LatentClips) -> LatentWorldModel:
    """A fresh model of this config, normalised on the training windows (the same on every start)."""
    ref = clips.manifest.checkpoint
    table = read_code_table(cfg.latents, ref) if cfg.target == "codes" else None
    layout = ref.layout if table is not None else None
    config = WorldModelConfig(
        ref.d_z,
        clips.manifest.arrays[cfg.action] * cfg.frame_skip if cfg.action else 0,
        cfg.action,
        cfg.history,
        cfg.frame_skip,
        cfg.width,
        cfg.depth,
        cfg.heads,
        dropout=cfg.dropout,
        target=cfg.target,
        vocabularies=layout.vocabularies if layout else (),
        widths=layout.widths if layout else (),
    )
    model = LatentWorldModel(config)
    if table is not None:
        model.code_table.copy_(table)
    every = clips.collate(range(len(clips)))
    model.set_normalization(
        every.z.reshape(-1, config.d_z),
        every.arrays[cfg.action].reshape(-1, config.action_dim) if cfg.action else None,
    )
    return model


def _start_checkpoint(cfg: TrainConfig) -> Checkpoint | None:
    """The checkpoint to resume from; refuses to start over a run that holds checkpoints unless resuming."""
    remove_incomplete(cfg.output)
    latest = latest_checkpoint(cfg.output)
    if latest is not None and not cfg.resume:
        raise ValueError(
            f"{cfg.output} already holds world-model checkpoints (latest {latest.name}); pass --resume to "
            "continue that run, or choose another output folder"
        )
    return None if latest is None else read_checkpoint(latest, MODEL_DIR)


def _resume(
    checkpoint: Checkpoint,
    model: LatentWorldModel,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    schedule: WarmupCosine,
    fingerprint: str,
) -> list[dict[str, float]]:
    """Weights, optimiser and generators from the checkpoint; returns the loss log up to its step."""
    saved, student = load_world_model(checkpoint.path / MODEL_DIR)
    if saved.config != model.config or student != fingerprint:
        raise ValueError(
            f"{checkpoint.path} holds a world model of {saved.config} on latents of {student}; this run is "
            f"{model.config} on {fingerprint}. Resume with the same options and latents, or use another output"
        )
    if checkpoint.state.batch_size != cfg.batch_size:
        raise ValueError(
            f"{checkpoint.path} was trained with batch size {checkpoint.state.batch_size}, this run has "
            f"{cfg.batch_size}; resume with --batch-size {checkpoint.state.batch_size}"
        )
    if checkpoint.state.schedule != asdict(schedule):
        raise ValueError(
            f"{checkpoint.path} follows the schedule {checkpoint.state.schedule}, this run {asdict(schedule)}; "
            "resume with the same --steps and --lr"
        )
    model.load_state_dict(saved.state_dict(), strict=True)
    load_optimizer_state(optimizer, checkpoint.optimizer)
    rng.restore(checkpoint.rng[0])
    log_file = checkpoint.path / MODEL_DIR / LOG_FILE
    return [json.loads(line) for line in log_file.read_text(encoding="utf-8").splitlines()]


def _save(model: LatentWorldModel, directory: Path, fingerprint: str, lines: list[dict[str, float]]) -> None:
    """A world-model folder: weights, config and the loss log so far."""
    save_world_model(model, directory, fingerprint)
    atomic_write_text(directory / LOG_FILE, "".join(json.dumps(line) + "\n" for line in lines))


def train_world_model(cfg: TrainConfig) -> dict[str, float]:
    """Fit and save (resuming from ``<output>/checkpoints`` when asked); returns the last logged loss and
    the step count. A resumed run ends with the same weights as one that never stopped."""
    arrays = [cfg.action] if cfg.action else []
    clips = LatentClips(cfg.latents, cfg.split, cfg.history, 1, cfg.frame_skip, arrays=arrays)
    fingerprint = clips.manifest.checkpoint.fingerprint
    checkpoint = _start_checkpoint(cfg)
    rng.seed_everything(cfg.seed)
    model = _build(cfg, clips).to(cfg.device).train()
    optimizer = build_optimizer(
        model, cfg.lr, cfg.weight_decay, (0.9, 0.999), no_decay_names=("position",), fused=False
    )
    schedule = WarmupCosine(cfg.lr, warmup_steps=0, total_steps=cfg.steps, min_lr_ratio=0.0)
    lines: list[dict[str, float]] = []
    step = 0
    if checkpoint is not None:
        lines = _resume(checkpoint, model, optimizer, cfg, schedule, fingerprint)
        step = checkpoint.state.step
        log.info("resumed from %s at step %d", checkpoint.path, step)
    running = 0.0
    batches = clips.batches(cfg.batch_size, seed=cfg.seed, start_batch=step)
    while step < cfg.steps:
        schedule.apply(optimizer, step)
        batch = next(batches)
        actions = batch.arrays[cfg.action].to(cfg.device) if cfg.action else None
        z = batch.z.to(cfg.device)
        if cfg.target == "z":
            loss = next_z_loss(model, z, actions)
        else:
            assert batch.codes is not None  # LatentClips checks every video carries the manifest's codes
            loss = next_code_loss(model, z, batch.codes.to(cfg.device), actions)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        running += loss.item()
        if step % cfg.log_every == 0 or step == cfg.steps:
            count = step % cfg.log_every or cfg.log_every
            lines.append({"step": step, "loss": running / count})
            log.info("step %d: loss %.4f", step, running / count)
            running = 0.0
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            state = TrainerState(step, step, 1, cfg.batch_size, 1, asdict(schedule))
            write_checkpoint(
                cfg.output,
                state,
                optimizer.state_dict(),
                [rng.capture()],
                lambda folder: _save(model, folder / MODEL_DIR, fingerprint, lines),
                cfg.keep_last,
            )
    _save(model.eval(), cfg.output, fingerprint, lines)
    return {"steps": float(cfg.steps), "loss": lines[-1]["loss"] if lines else float("nan")}
