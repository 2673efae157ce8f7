"""Train the latent world model on a latent dataset: teacher-forced next-z prediction on LatentClips windows.

Each step draws a batch of windows of ``history + 1`` z's (``frame_skip`` apart) with their actions;
position t predicts z_{t+1} from z_0..z_t and a_0..a_t. The loss is the mean squared error in the
normalised z space plus ``1 - cosine`` (the rollout metric), over every position; with
``target="codes"`` (latents of a quantised student) it is the cross-entropy of the next frame's codes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from distill.data.latent_clips import LatentClips
from distill.data.latents import read_code_table
from distill.io import atomic_write_text
from distill.worldmodel.config import Target, WorldModelConfig
from distill.worldmodel.model import LatentWorldModel, save_world_model

log = logging.getLogger(__name__)


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
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    seed: int = 0
    device: str = "cpu"
    log_every: int = 50
    target: Target = "z"  # z: next-z regression | codes: cross-entropy over the next frame's codes


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
    """Teacher forcing on windows z [B, H + 1, d_z] with their codes [B, H + 1, n]: cross-entropy of codes[:, 1:]."""
    history = z.shape[1] - 1
    logits = model.code_logits(z[:, :history], None if actions is None else actions[:, :history])
    return F.cross_entropy(logits.flatten(0, 2), codes[:, 1:].flatten())


def train_world_model(cfg: TrainConfig) -> dict[str, float]:
    """Fit and save; returns the last logged loss and the step count."""
    arrays = [cfg.action] if cfg.action else []
    clips = LatentClips(cfg.latents, cfg.split, cfg.history, 1, cfg.frame_skip, arrays=arrays)
    action_dim = clips.manifest.arrays[cfg.action] * cfg.frame_skip if cfg.action else 0
    ref = clips.manifest.checkpoint
    table = read_code_table(cfg.latents, ref) if cfg.target == "codes" else None
    config = WorldModelConfig(
        clips.manifest.checkpoint.d_z,
        action_dim,
        cfg.action,
        cfg.history,
        cfg.frame_skip,
        cfg.width,
        cfg.depth,
        cfg.heads,
        target=cfg.target,
        codes=ref.codes if table is not None else 0,
        vocabulary=ref.vocabulary if table is not None else 0,
    )
    torch.manual_seed(cfg.seed)
    model = LatentWorldModel(config)
    if table is not None:
        model.code_table.copy_(table)
    every = clips.collate(range(len(clips)))
    model.set_normalization(
        every.z.reshape(-1, config.d_z),
        every.arrays[cfg.action].reshape(-1, action_dim) if cfg.action else None,
    )
    model.to(cfg.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(cfg.steps, 1))
    lines, running = [], 0.0
    batches = clips.batches(cfg.batch_size, seed=cfg.seed)
    for step in range(1, cfg.steps + 1):
        batch = next(batches)
        actions = batch.arrays[cfg.action].to(cfg.device) if cfg.action else None
        z = batch.z.to(cfg.device)
        if table is None:
            loss = next_z_loss(model, z, actions)
        else:
            assert batch.codes is not None  # LatentClips checks every video carries the manifest's codes
            loss = next_code_loss(model, z, batch.codes.to(cfg.device), actions)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running += loss.item()
        if step % cfg.log_every == 0 or step == cfg.steps:
            count = step % cfg.log_every or cfg.log_every
            lines.append({"step": step, "loss": running / count})
            log.info("step %d: loss %.4f", step, running / count)
            running = 0.0
    save_world_model(model.eval(), cfg.output, clips.manifest.checkpoint.fingerprint)
    atomic_write_text(cfg.output / "train_log.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    return {"steps": float(cfg.steps), "loss": lines[-1]["loss"] if lines else float("nan")}
