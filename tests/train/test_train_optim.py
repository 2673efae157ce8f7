"""AdamW groups, the warmup + cosine schedule, and the EMA update, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distill.train.ema import Ema
from distill.train.optim import WarmupCosine, build_optimizer, split_decay


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.position_embeddings = nn.Parameter(torch.zeros(1, 4, 3))
        self.linear = nn.Linear(3, 3)
        self.norm = nn.LayerNorm(3)
        self.frozen = nn.Parameter(torch.zeros(3, 3), requires_grad=False)


def test_decay_exempts_1d_and_named_params() -> None:
    decay, exempt = split_decay(_Toy(), ["position_embeddings"])
    assert [name for name, _ in decay] == ["linear.weight"]
    assert sorted(name for name, _ in exempt) == [
        "linear.bias",
        "norm.bias",
        "norm.weight",
        "position_embeddings",
    ]


def test_optimizer_applies_decay_only_to_matrices() -> None:
    model = _Toy()
    optimizer = build_optimizer(
        model,
        lr=0.1,
        weight_decay=0.5,
        betas=(0.9, 0.999),
        no_decay_names=["position_embeddings"],
        fused=False,
    )
    with torch.no_grad():
        model.position_embeddings.fill_(1.0)
        model.linear.weight.fill_(1.0)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # zero gradient: only decay moves a parameter
    optimizer.step()
    assert torch.allclose(model.linear.weight, torch.full((3, 3), 1.0 - 0.1 * 0.5))
    assert torch.equal(model.position_embeddings, torch.ones(1, 4, 3))


def test_warmup_cosine_values() -> None:
    schedule = WarmupCosine(base_lr=1.0, warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    assert [schedule.lr_at(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert schedule.lr_at(4) == pytest.approx(1.0)
    assert schedule.lr_at(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert schedule.lr_at(14) == pytest.approx(0.1)
    assert schedule.lr_at(100) == pytest.approx(0.1)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=123.0)
    assert schedule.apply(optimizer, 1) == 0.5
    assert optimizer.param_groups[0]["lr"] == 0.5


def test_ema_update_is_a_lerp() -> None:
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = Ema(model, decay=0.75)
    with torch.no_grad():
        model.weight.fill_(4.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, torch.full((2, 2), 1.0))
    assert not any(p.requires_grad for p in ema.module.parameters())
    with pytest.raises(ValueError, match="ema_decay"):
        Ema(model, decay=1.0)
