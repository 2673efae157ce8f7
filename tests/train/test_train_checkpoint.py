"""Checkpoint directories: atomic layout, round trip, pruning, interrupted writes, RNG restore."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from distill import rng
from distill.checkpoints import (
    TrainerState,
    complete_checkpoints,
    latest_checkpoint,
    read_checkpoint,
    remove_incomplete,
    write_checkpoint,
)


def _draws() -> tuple[list[float], list[float], list[float]]:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_rng_capture_restore_repeats_every_generator() -> None:
    rng.seed_everything(7)
    _draws()
    state = rng.capture()
    first = _draws()
    rng.seed_everything(99)
    rng.restore(state)
    assert _draws() == first


def _state(step: int) -> TrainerState:
    return TrainerState(
        step=step,
        loader_position=2 * step,
        world_size=2,
        batch_size=4,
        grad_accum=2,
        schedule={"base_lr": 0.1},
    )


def _save_models(folder: Path) -> None:
    (folder / "student").mkdir()
    (folder / "student" / "config.json").write_text("{}")


def test_round_trip_prune_and_incomplete(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    rng.seed_everything(3)
    states = [rng.capture(), rng.capture()]
    for step in (10, 20, 30):
        write_checkpoint(tmp_path, _state(step), optimizer.state_dict(), states, _save_models, keep_last=2)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_00000020", "step_00000030"]

    # an interrupted write (no trainer.json, temp name) is neither listed nor read, and is cleaned up
    stale = tmp_path / "checkpoints" / ".tmp-step_00000040-123"
    (stale / "student").mkdir(parents=True)
    half = tmp_path / "checkpoints" / "step_00000050"
    half.mkdir()
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == "step_00000030"
    assert remove_incomplete(tmp_path) == [stale] and not stale.exists()

    back = read_checkpoint(latest)
    assert back.state == _state(30)
    assert back.state.global_batch == 8
    original = optimizer.state_dict()["state"][0]
    restored = back.optimizer["state"][0]
    assert torch.equal(original["exp_avg"], restored["exp_avg"]) and torch.equal(
        original["exp_avg_sq"], restored["exp_avg_sq"]
    )
    assert len(back.rng) == 2
    rng.restore(back.rng[1])
    expected = _draws()
    rng.restore(states[1])
    assert _draws() == expected


def test_rewriting_a_step_replaces_it(tmp_path: Path) -> None:
    optimizer = torch.optim.AdamW(nn.Linear(2, 2).parameters())
    write_checkpoint(tmp_path, _state(5), optimizer.state_dict(), [rng.capture()], _save_models, keep_last=0)
    replaced = TrainerState(5, 99, 1, 4, 1, {})
    write_checkpoint(tmp_path, replaced, optimizer.state_dict(), [rng.capture()], _save_models, keep_last=0)
    assert read_checkpoint(tmp_path / "checkpoints" / "step_00000005").state == replaced
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000005"]


def test_a_step_rewritten_with_a_failed_swap_keeps_its_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resumed run reaching a step again replaces it whole; if the final rename fails (fault injection),
    the old checkpoint is back in place and readable, and no temporary folder is left."""
    rng.seed_everything(3)
    states = [rng.capture()]
    write_checkpoint(tmp_path, _state(10), {"old": torch.ones(1)}, states, _save_models, keep_last=0)
    final, rename = tmp_path / "checkpoints" / "step_00000010", os.replace
    failed: list[object] = []

    def swap_fails(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst) == final and not failed:  # the first rename onto the step folder: the new one
            failed.append(src)
            raise OSError("injected: the swap failed")
        rename(src, dst)

    monkeypatch.setattr(os, "replace", swap_fails)
    with pytest.raises(OSError, match="injected"):
        write_checkpoint(tmp_path, _state(10), {"new": torch.ones(1)}, states, _save_models, keep_last=0)
    assert failed and [p.name for p in (tmp_path / "checkpoints").iterdir()] == [final.name]
    assert set(read_checkpoint(final).optimizer) == {"old"}
