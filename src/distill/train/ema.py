"""Exponential moving average of the student's weights (a smoother model to evaluate and ship)."""

from __future__ import annotations

import copy
from typing import Generic, TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


class Ema(Generic[M]):
    """``shadow = decay * shadow + (1 - decay) * live`` after every optimiser step.

    The shadow is a full copy of the module (float32, eval mode, no grads) so it can be saved with
    the same ``save_pretrained`` as the live student and loaded on its own. Buffers are copied.
    """

    def __init__(self, model: M, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"training.ema_decay={decay} must be in (0, 1)")
        self.decay = decay
        self.module: M = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        shadow: list[torch.Tensor] = list(self.module.parameters())
        live = [p.detach() for p in model.parameters()]
        if len(shadow) != len(live):
            raise RuntimeError("EMA and student have different parameter lists")
        torch._foreach_lerp_(shadow, live, 1.0 - self.decay)
        for mine, theirs in zip(self.module.buffers(), model.buffers(), strict=True):
            mine.copy_(theirs)
