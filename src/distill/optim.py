"""AdamW with the usual ViT exemptions from weight decay, and a warmup + cosine schedule.

Decay shrinks weights toward zero; that is wrong for norms' scales, biases, and learned
position embeddings / queries (their magnitude carries meaning). Every parameter with fewer
than two dimensions is exempt, plus those whose name matches one of ``no_decay_names``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


def split_decay(
    model: nn.Module, no_decay_names: Sequence[str]
) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """(decayed, exempt) named trainable parameters."""
    decay: list[tuple[str, nn.Parameter]] = []
    exempt: list[tuple[str, nn.Parameter]] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or any(token in name for token in no_decay_names):
            exempt.append((name, param))
        else:
            decay.append((name, param))
    return decay, exempt


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    no_decay_names: Sequence[str],
    fused: bool,
) -> torch.optim.AdamW:
    decay, exempt = split_decay(model, no_decay_names)
    if not decay and not exempt:
        raise ValueError("the student has no trainable parameters")
    groups = [
        {"params": [p for _, p in decay], "weight_decay": weight_decay},
        {"params": [p for _, p in exempt], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


@dataclass(frozen=True)
class WarmupCosine:
    """The learning rate as a pure function of the optimiser step: linear warmup, then cosine.

    Holding no state beyond the step means a resumed run follows the schedule of the config it
    is given; the checkpoint records these fields so a changed schedule can be reported.
    """

    base_lr: float
    warmup_steps: int
    total_steps: int
    min_lr_ratio: float

    def lr_at(self, step: int) -> float:
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.base_lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's lr for optimiser step ``step`` and return it."""
        lr = self.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``, keeping this optimizer's implementation choice.

    Loading replaces the parameter groups' settings with the saved ones, ``fused`` included: a run
    resumed on a GPU from a checkpoint written on a CPU would silently lose fused AdamW (and keep its
    step counters on the CPU). The saved groups get this optimizer's ``fused`` and ``foreach`` first.
    """
    saved = state["param_groups"]
    if len(saved) == len(optimizer.param_groups):  # else torch's own error says what differs
        saved = [
            {**group, "fused": now.get("fused"), "foreach": now.get("foreach")}
            for group, now in zip(saved, optimizer.param_groups, strict=True)
        ]
    optimizer.load_state_dict({**state, "param_groups": saved})
