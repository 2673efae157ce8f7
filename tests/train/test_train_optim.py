"""AdamW groups, the warmup + cosine schedule, and the EMA update, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distill.optim import WarmupCosine, build_optimizer, load_optimizer_state, split_decay
from distill.train.ema import Ema, decay_at


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


def test_a_resumed_optimizer_keeps_its_own_fused_setting() -> None:
    """A checkpoint written by an unfused run (a CPU's) loaded into a fused optimizer (a GPU's) stays
    fused, and its next step is the unfused continuation's; plain load_state_dict would unfuse it."""

    def built(fused: bool) -> tuple[_Toy, torch.optim.AdamW]:
        torch.manual_seed(0)
        model = _Toy()
        return model, build_optimizer(model, 0.1, 0.05, (0.9, 0.999), ["position_embeddings"], fused=fused)

    def step(model: _Toy, optimizer: torch.optim.AdamW) -> None:
        torch.manual_seed(1)
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        optimizer.step()

    saver, saved = built(fused=False)
    step(saver, saved)
    state = saved.state_dict()
    resumed, fused = built(fused=True)
    resumed.load_state_dict(saver.state_dict())
    load_optimizer_state(fused, state)
    assert all(group["fused"] for group in fused.param_groups)
    assert [g["weight_decay"] for g in fused.param_groups] == [g["weight_decay"] for g in saved.param_groups]
    step(saver, saved)
    step(resumed, fused)
    for want, got in zip(saver.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    plain = built(fused=True)[1]
    plain.load_state_dict(state)
    assert not any(group["fused"] for group in plain.param_groups)  # what the helper prevents


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
    ema.update(model, step=10_000)  # far from the start the bias correction is gone: a plain lerp
    assert torch.allclose(ema.module.weight, torch.full((2, 2), 1.0))
    assert not any(p.requires_grad for p in ema.module.parameters())
    with pytest.raises(ValueError, match="ema_decay"):
        Ema(model, decay=1.0)


def test_ema_is_bias_corrected_against_a_hand_computation() -> None:
    """decay 0.5, weights 2, 4, 8 after steps 1..3 (initial weights 100, which must leave no trace):
    shadow_t = sum_i (1 - d) d^(t-i) w_i / (1 - d^t) = 2, (0.25*2 + 0.5*4) / 0.75 = 10/3,
    (0.125*2 + 0.25*4 + 0.5*8) / 0.875 = 6."""
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(100.0)
    ema = Ema(model, decay=0.5)
    for step, (weight, expected) in enumerate([(2.0, 2.0), (4.0, 10.0 / 3.0), (8.0, 6.0)], start=1):
        with torch.no_grad():
            model.weight.fill_(weight)
        ema.update(model, step)
        assert float(ema.module.weight) == pytest.approx(expected, rel=1e-6), step
    assert decay_at(0.5, 1) == 0.0 and decay_at(0.5, 2) == pytest.approx(1 / 3)


def test_ema_of_a_long_finetune_keeps_none_of_the_initial_weights() -> None:
    """The issue's case: decay 0.9998 over 10k steps. A plain EMA keeps 0.9998^10000 = 13.5% of the
    initial weights; the corrected one keeps none, and its share of each step's weights is the
    normalised d^(t-i) (1 - d) / (1 - d^t)."""
    decay, steps = 0.9998, 10_000
    assert decay**steps == pytest.approx(0.1353, abs=1e-4)
    share_of_initial = 1.0
    for step in range(1, steps + 1):
        share_of_initial *= decay_at(decay, step)
    assert share_of_initial == 0.0
    # the weights of the last step: (1 - d) / (1 - d^t) of the shadow
    assert 1 - decay_at(decay, steps) == pytest.approx((1 - decay) / (1 - decay**steps), rel=1e-9)
