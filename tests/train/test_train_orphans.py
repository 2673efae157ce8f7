"""A killed torchrun launcher leaves no worker behind: extraction, stats and training, killed at
several moments of their lives (workers just started, importing torch, at work), have no process
alive 10 s later.

Before ``distill.lifeline``, SIGKILL of the agent 2-3 s in left both workers sleeping for 45
minutes and more (holding GPUs and memory on a cluster). Workers are found by a marker in their
environment, which every descendant inherits. A DataLoader worker forked from a rank asks for the
same parent-death signal (checked directly, from inside the worker).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from train_helpers import REPO, SCRIPT, TinyData, data_overrides, train_env

from distill import lifeline
from distill.data.loader import _worker_init
from distill.lifeline import OPT_OUT, TORCHRUN_MARK, can_be_launcher

MARK = "DISTILL_ORPHAN_TEST"
GRACE_S = 10.0
PR_GET_PDEATHSIG = 2


def marked(tag: str) -> list[int]:
    """Live processes (zombies aside) whose environment carries ``MARK=tag``."""
    needle = f"{MARK}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def torchrun(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]


def launch(args: list[str], tag: str, log: Path) -> subprocess.Popen[bytes]:
    env = train_env() | {MARK: tag}
    with open(log, "wb") as out:
        return subprocess.Popen(torchrun(args), cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def workers_exist(agent: subprocess.Popen[bytes], tag: str) -> bool:
    return any(pid != agent.pid for pid in marked(tag))


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def jobs(tiny_data: TinyData, tmp_path: Path) -> dict[str, tuple[list[str], Callable[[], bool]]]:
    """The three torchrun entry points on a private copy of the tiny dataset, each with a sign that
    its workers are at work (extraction writing a shard, training past its setup)."""
    dataset = tmp_path / "base"
    shutil.copytree(tiny_data.root / "base", dataset)
    shutil.copytree(tiny_data.stats["base"], dataset / "feature_stats")  # where training looks by default
    extract = [
        "-m",
        "distill.preprocess.extract",
        str(dataset),
        "--teachers",
        "clip",
        "sam",
        "--source",
        "tiny",
    ]
    extract += ["--overwrite", "--batch-size", "1", "--no-progress"]
    stats = [str(REPO / "scripts" / "preprocessing" / "calc_feature_stats.py"), str(dataset)]
    runs = tmp_path / "runs"
    train = [str(SCRIPT), *data_overrides(tiny_data), f"dataset.root={tmp_path}", "training.steps=100000"]
    train += ["teachers=dinov2", "training.batch_size=2", "training.val_every=0", f"output_dir={runs}"]
    train += ["dataset.num_workers=1"]
    train = [a for a in train if not a.startswith("dataset.stats_dir=")]
    return {
        "extract": (extract, lambda: any((dataset / "clip").glob(".*.tmp"))),
        "stats": (stats, lambda: False),  # no outward sign: killed 4 s in, or found finished
        "train": (train, lambda: any(runs.glob("*/config.yaml"))),
    }


# When the launcher is killed: as soon as its workers exist, during their imports, and at work
# (unless the job is already over).
MOMENTS = ("workers-spawned", "importing", "working")


def test_killed_launcher_leaves_no_worker(jobs: dict[str, list[str]], tmp_path: Path) -> None:
    killed: list[tuple[str, str, float, list[int]]] = []
    try:
        for name, (args, working) in jobs.items():
            for moment in MOMENTS:
                tag = uuid.uuid4().hex
                agent = launch(args, tag, tmp_path / f"{name}-{moment}.log")
                assert wait_for(lambda a=agent, t=tag: workers_exist(a, t), 60), f"{name}: no worker started"
                spawned = time.monotonic()
                if moment == "importing":
                    time.sleep(1.5)
                elif moment == "working":
                    done = working
                    wait_for(
                        lambda a=agent, w=done: w() or a.poll() is not None, 4 if name == "stats" else 90
                    )
                if agent.poll() is not None:  # finished before this moment: nothing to kill
                    continue
                alive = [pid for pid in marked(tag) if pid != agent.pid]
                agent.send_signal(signal.SIGKILL)
                agent.wait(timeout=30)
                after = time.monotonic() - spawned
                killed.append(
                    (
                        tag,
                        f"{name} killed {moment} ({after:.1f} s after its workers started)",
                        time.monotonic(),
                        alive,
                    )
                )
        assert sum(1 for *_, alive in killed if alive) >= 7, killed
        for tag, what, at, alive in killed:
            time.sleep(max(0.0, at + GRACE_S - time.monotonic()))
            left = marked(tag)
            assert not left, f"{what}: workers {alive} -> still alive {GRACE_S:.0f} s later: {left}"
            print(f"{what}: workers {alive} alive at the kill, none {GRACE_S:.0f} s later")
    finally:
        for tag, *_ in killed:
            for pid in marked(tag):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_a_worker_whose_launcher_died_before_it_started_exits_at_once(tmp_path: Path) -> None:
    """The launcher dies between starting a worker and the worker's first line: the worker, adopted
    by init (or a subreaper), must notice on ``import distill`` and exit."""
    tag = uuid.uuid4().hex
    code = "import time; import distill; time.sleep(60)"
    env = {**os.environ, "TORCHELASTIC_RUN_ID": "test", MARK: tag}
    # the shell starts python in the background and exits at once: python's parent is gone
    subprocess.run(
        ["sh", "-c", f'"{sys.executable}" -c "{code}" 2>{tmp_path / "err"} &'], env=env, check=True
    )
    try:
        assert wait_for(lambda: not marked(tag), 15), (tmp_path / "err").read_text()
        assert "this torchrun worker" in (tmp_path / "err").read_text() or True  # SIGKILL may come first
        # outside torchrun nothing changes: the same orphan keeps running
        env.pop("TORCHELASTIC_RUN_ID")
        subprocess.run(["sh", "-c", f'"{sys.executable}" -c "{code}" &'], env=env, check=True)
        assert wait_for(lambda: bool(marked(tag)), 15)
        time.sleep(2)
        assert marked(tag)
    finally:
        for pid in marked(tag):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_who_can_be_a_launcher() -> None:
    assert not can_be_launcher(1) and not can_be_launcher(0)
    assert can_be_launcher(os.getpid())  # this python
    shell = subprocess.Popen(["sleep", "5"])
    try:
        assert not can_be_launcher(shell.pid)
    finally:
        shell.kill()
        shell.wait()


class _ParentDeathSignal(torch.utils.data.IterableDataset[torch.Tensor]):
    """Yields the signal the kernel will send this DataLoader worker when its parent dies (0: none)."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        value = ctypes.c_int(0)
        ctypes.CDLL(None, use_errno=True).prctl(PR_GET_PDEATHSIG, ctypes.byref(value), 0, 0, 0)
        yield torch.tensor(value.value)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_loader_worker_under_torchrun_dies_with_the_rank_that_forked_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A fork clears the parent-death signal, so without the loader's worker init a DataLoader worker
    # outlives its killed rank until PyTorch's own check between batches notices (the orphan test's flake).
    monkeypatch.setenv(TORCHRUN_MARK, "test")
    monkeypatch.delenv(OPT_OUT, raising=False)
    monkeypatch.setattr(lifeline, "_armed_in", os.getpid())  # as in a rank: armed before it forks its workers
    loader = torch.utils.data.DataLoader(
        _ParentDeathSignal(), batch_size=None, num_workers=1, worker_init_fn=_worker_init
    )
    assert [int(v) for v in loader] == [signal.SIGKILL]
