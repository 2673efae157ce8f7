"""Exponential moving average of the student's weights (a smoother model to evaluate and ship)."""

from __future__ import annotations

import copy
from typing import Generic, TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


def decay_at(decay: float, step: int) -> float:
    """The bias-corrected decay of update ``step`` (1, 2, ...): ``d (1 - d^(step-1)) / (1 - d^step)``.

    A plain EMA started from the initial weights keeps ``d^t`` of them after ``t`` updates: with
    ``d = 0.9998`` that is 13.5% after a 10k-step finetune. Bias correction (as in Adam's moments)
    leaves them out: after ``t`` updates the shadow is exactly
    ``sum_i (1 - d) d^(t-i) w_i / (1 - d^t)`` over the weights ``w_1..w_t`` after each optimiser
    step, a normalised average in which the initial weights have no share (update 1 copies ``w_1``).
    It tends to ``d`` as ``d^t`` vanishes, so long runs are unchanged.
    """
    if step < 1:
        raise ValueError(f"EMA update numbers start at 1, got {step}")
    return decay * (1.0 - decay ** (step - 1)) / (1.0 - decay**step)


class Ema(Generic[M]):
    """``shadow = b_t * shadow + (1 - b_t) * live`` after optimiser step ``t``, ``b_t`` = :func:`decay_at`.

    The shadow is a full copy of the module (float32, eval mode, no grads) so it can be saved with
    the same ``save_pretrained`` as the live student and loaded on its own. Buffers are copied.
    ``b_t`` depends only on the step, so a resumed run (which knows its step) continues exactly.
    """

    def __init__(self, model: M, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"training.ema_decay={decay} must be in (0, 1)")
        self.decay = decay
        self.module: M = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold in ``model``'s weights after optimiser step ``step`` (the first step is 1)."""
        shadow: list[torch.Tensor] = list(self.module.parameters())
        live = [p.detach() for p in model.parameters()]
        if len(shadow) != len(live):
            raise RuntimeError("EMA and student have different parameter lists")
        torch._foreach_lerp_(shadow, live, 1.0 - decay_at(self.decay, step))
        for mine, theirs in zip(self.module.buffers(), model.buffers(), strict=True):
            mine.copy_(theirs)
