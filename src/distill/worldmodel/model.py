"""A small causal transformer over (z, action) tokens that predicts the next z, and its checkpoint folder.

Token t is ``Linear(z_t normalised) + Linear(a_t normalised) + position t``; causal self-attention
lets position t see tokens 0..t; the head predicts the normalised change ``z_{t+1} - z_t``, added
back to z_t, or (``target="codes"``, latents of a quantised student) logits over each code of frame
t+1, whose most likely codes become the next z through the student's code table (a buffer). Codes
may have different vocabularies (a quantised summary, then keypoint grid cells): every code gets a
row of the largest vocabulary's logits, with the values it cannot take masked to -inf.
Normalisation constants (per-dimension mean/std of z and of the actions over the training split)
are buffers, so they travel with the weights. Open-loop rollouts feed predictions
back in, keeping the last ``history`` z's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from distill.io import atomic_path, atomic_write_text
from distill.worldmodel.config import WorldModelConfig

CHECKPOINT_FORMAT = "distill.worldmodel"


class LatentWorldModel(nn.Module):
    z_mean: torch.Tensor
    z_std: torch.Tensor
    a_mean: torch.Tensor
    a_std: torch.Tensor
    code_table: torch.Tensor
    code_valid: torch.Tensor

    def __init__(self, config: WorldModelConfig) -> None:
        super().__init__()
        self.config = config
        self.z_in = nn.Linear(config.d_z, config.width)
        self.a_in = nn.Linear(config.action_dim, config.width) if config.action_dim else None
        self.position = nn.Parameter(torch.zeros(config.history, config.width))
        layer = nn.TransformerEncoderLayer(
            config.width,
            config.heads,
            config.width * config.mlp_ratio,
            config.dropout,
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, config.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.width)
        self.layout = config.layout
        outputs = config.d_z if self.layout is None else self.layout.codes * self.layout.vocabulary
        self.head = nn.Linear(config.width, outputs)
        nn.init.normal_(self.position, std=0.02)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("z_mean", torch.zeros(config.d_z))
        self.register_buffer("z_std", torch.ones(config.d_z))
        self.register_buffer("a_mean", torch.zeros(config.action_dim))
        self.register_buffer("a_std", torch.ones(config.action_dim))
        if self.layout is not None:
            layout = self.layout
            self.register_buffer("code_table", torch.zeros(layout.codes, layout.vocabulary, layout.width))
            # derived from the config, so not saved: checkpoints keep the keys of one-vocabulary layouts
            self.register_buffer("code_valid", layout.valid(), persistent=False)

    def set_normalization(self, z: torch.Tensor, actions: torch.Tensor | None) -> None:
        """Per-dimension mean/std (floored at 1e-6) from training rows z [N, d_z], actions [N, A]."""
        self.z_mean.copy_(z.mean(0))
        self.z_std.copy_(z.std(0).clamp_min(1e-6))
        if actions is not None:
            self.a_mean.copy_(actions.mean(0))
            self.a_std.copy_(actions.std(0).clamp_min(1e-6))

    def forward(self, z: torch.Tensor, actions: torch.Tensor | None) -> torch.Tensor:
        """z [B, T, d_z], actions [B, T, A] (T <= history) -> predicted next z [B, T, d_z]."""
        if self.layout is None:
            return z + self.head(self._hidden(z, actions)) * self.z_std
        codes = self.code_logits(z, actions).argmax(-1)  # the most likely codes, as their z
        return self.layout.lookup(self.code_table, codes)

    def code_logits(self, z: torch.Tensor, actions: torch.Tensor | None) -> torch.Tensor:
        """target="codes": z [B, T, d_z], actions -> logits [B, T, codes, vocabulary] of frame t+1's codes,
        -inf at the values a code cannot take (vocabulary is the largest of the codes')."""
        if self.layout is None:
            raise ValueError("this world model regresses z (target='z'); it has no code logits")
        out = self.head(self._hidden(z, actions)).unflatten(-1, (self.layout.codes, self.layout.vocabulary))
        return out.masked_fill(~self.code_valid, float("-inf"))

    def _hidden(self, z: torch.Tensor, actions: torch.Tensor | None) -> torch.Tensor:
        steps = z.shape[1]
        if steps > self.config.history:
            raise ValueError(f"{steps} steps for a model of history {self.config.history}")
        tokens = self.z_in((z - self.z_mean) / self.z_std) + self.position[:steps]
        if self.a_in is not None:
            if actions is None or actions.shape[:2] != z.shape[:2]:
                raise ValueError(f"this model needs actions [B, {steps}, {self.config.action_dim}]")
            tokens = tokens + self.a_in((actions - self.a_mean) / self.a_std)
        mask = nn.Transformer.generate_square_subsequent_mask(steps, device=z.device)
        return self.norm(self.blocks(tokens, mask=mask, is_causal=True))

    @torch.no_grad()
    def rollout(self, context: torch.Tensor, actions: torch.Tensor | None, steps: int) -> torch.Tensor:
        """Open loop: context z [B, H, d_z] and actions [B, H + steps - 1, A] -> imagined z [B, steps, d_z]."""
        history = self.config.history
        if context.shape[1] != history:
            raise ValueError(f"context has {context.shape[1]} z's, the model's history is {history}")
        if actions is not None and actions.shape[1] < history + steps - 1:
            raise ValueError(f"{actions.shape[1]} actions for a {history}-step context and {steps} steps")
        sequence = context
        for step in range(steps):
            window = None if actions is None else actions[:, step : step + history]
            nxt = self(sequence[:, -history:], window)[:, -1:]
            sequence = torch.cat([sequence, nxt], dim=1)
        return sequence[:, history:]


def save_world_model(model: LatentWorldModel, directory: Path, latents_fingerprint: str) -> None:
    """``config.json`` (with the student fingerprint its z's came from) and ``model.safetensors``, atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    payload = {"format": CHECKPOINT_FORMAT, "config": model.config.to_dict(), "student": latents_fingerprint}
    atomic_write_text(directory / "config.json", json.dumps(payload, indent=2) + "\n")


def load_world_model(directory: Path, device: torch.device | str = "cpu") -> tuple[LatentWorldModel, str]:
    """(model in eval mode, the student fingerprint of its training latents); strict about every tensor."""
    path = directory / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no {path}: not a world-model checkpoint (write one with distill-worldmodel train)"
        )
    payload = json.loads(path.read_text(encoding="utf-8"))
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
    model = LatentWorldModel(WorldModelConfig.from_dict(payload["config"]))
    model.load_state_dict(load_file(str(directory / "model.safetensors")), strict=True)
    return model.to(device).eval(), str(payload["student"])
