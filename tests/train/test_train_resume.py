"""SIGKILL a 2-rank run at a drawn moment after a checkpoint; resume=auto ends where the reference ends.

The moment is drawn from a fixed seed (override with ``DISTILL_KILL_SEED`` to explore others); the
seed is printed and named in every failure, so a failing draw can be rerun exactly.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from train_helpers import REFERENCE_BATCH, REPO, ReferenceRun, command, metric_records, run_train, train_env

from distill.checkpoints import latest_checkpoint

KILL_SEED = 1234


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in their own sessions)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def kill_tree(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the launcher and all its workers at once, like a node losing power."""
    for pid in [*descendants(proc.pid), proc.pid]:
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_sigkill_then_resume_repeats_the_uninterrupted_run(reference_run: ReferenceRun) -> None:
    seed = int(os.environ.get("DISTILL_KILL_SEED", KILL_SEED))
    print(f"kill seed {seed} (rerun with DISTILL_KILL_SEED={seed})")
    chance = random.Random(seed)
    wanted_step = 2 * chance.randint(1, 3)  # kill after the checkpoint of step 2, 4 or 6 (of 8)
    delay = chance.uniform(0.0, 0.15)
    overrides = [*reference_run.overrides, "run_name=killed", f"training.batch_size={REFERENCE_BATCH}"]
    run_dir = reference_run.run_dir.parent / "killed"
    proc = subprocess.Popen(
        command(overrides, nproc=2),
        cwd=REPO,
        env=train_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            latest = latest_checkpoint(run_dir)
            if latest is not None and int(latest.name.split("_")[1]) >= wanted_step:
                break
            assert proc.poll() is None, (
                f"the run ended before it was killed: {proc.stderr.read()[-3000:] if proc.stderr else ''}"
            )
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        time.sleep(delay)
    finally:
        kill_tree(proc)
    context = f"(seed {seed}: killed {delay:.3f}s after the checkpoint of step {wanted_step})"
    assert not (run_dir / "student").exists(), f"the run finished before the kill {context}"

    resumed = run_train([*overrides, "resume=auto"], nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stderr, context

    reference = reference_run.run_dir
    for folder in ("student", "student_ema"):
        want = load_file(str(reference / folder / "model.safetensors"))
        got = load_file(str(run_dir / folder / "model.safetensors"))
        worst = max(float((want[k] - got[k]).abs().max()) for k in want)
        assert worst <= 1e-6, f"{folder} differs by {worst} {context}"
    # metrics.jsonl describes one trajectory: redone steps replaced, not duplicated
    want_records, got_records = metric_records(reference, "train"), metric_records(run_dir, "train")
    assert [r["step"] for r in got_records] == [r["step"] for r in want_records] == [2, 4, 6, 8], context
    for want_record, got_record in zip(want_records, got_records, strict=True):
        assert abs(want_record["loss"] - got_record["loss"]) < 1e-5, context
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
    assert torch.equal(
        load_file(str(run_dir / "feature_stats" / "clip.safetensors"))["patch_std"],
        load_file(str(reference / "feature_stats" / "clip.safetensors"))["patch_std"],
    )
