"""A torchrun worker dies with its launcher.

When the torchrun agent is killed (SIGKILL, the OOM killer, a preempted job), nothing tells its
workers: they keep their GPU and memory, blocked in a collective or a store connection, for as
long as its timeout (30 minutes and more). So every distill process that torchrun started asks
the kernel, as the first thing ``import distill`` does, to kill it when its parent dies
(``PR_SET_PDEATHSIG``: Linux), and then checks that the parent it has is still the launcher: the
launcher may have died in the few milliseconds between starting the worker and that request.
Elsewhere (no ``prctl``) a daemon thread polls the parent pid instead.

SIGKILL is the signal: everything distill writes is crash-safe (atomic renames, temporary
files and checkpoint folders that the next run removes), and a worker whose launcher is gone has
no one to report to. DataLoader workers, forked from a worker, arm themselves the same way when they
start (the loader's worker init): the kernel clears the request on fork, and PyTorch's own check
of the parent runs only between batches, every 5 s or more on a loaded machine.

Only processes started by torchrun (``TORCHELASTIC_RUN_ID`` in the environment) are touched;
``DISTILL_KEEP_ORPHANS=1`` turns it off. Standard library only: this runs before torch is imported.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

TORCHRUN_MARK = "TORCHELASTIC_RUN_ID"  # set by torchrun's agent in every worker's environment
OPT_OUT = "DISTILL_KEEP_ORPHANS"
PR_SET_PDEATHSIG = 1
POLL_S = 0.5

_armed_in: int | None = None  # the pid that armed itself: a forked child has another pid and arms again


def started_by_torchrun() -> bool:
    return TORCHRUN_MARK in os.environ


def _parent_death_signal(sig: int) -> bool:
    """Ask the kernel to send ``sig`` when the parent dies; False where that does not exist."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def can_be_launcher(pid: int) -> bool:
    """Whether process ``pid`` can be torchrun's agent: a Python interpreter, never init or a shell.

    A worker whose launcher is already gone has been adopted by init (pid 1) or a subreaper (an
    init, a shell, a job step daemon). Where that cannot be read, assume the parent is the launcher.
    """
    if pid <= 1:
        return False
    try:
        exe = os.path.basename(os.readlink(f"/proc/{pid}/exe")).lower()
    except OSError:
        return True
    return "python" in exe or "pypy" in exe


def _orphaned(why: str) -> None:
    print(f"distill: {why}; this torchrun worker (pid {os.getpid()}) exits", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def _poll(parent: int) -> None:
    while True:
        time.sleep(POLL_S)
        if os.getppid() != parent:
            _orphaned(f"the torchrun launcher (pid {parent}) is gone")


def die_with_launcher() -> None:
    """Arm this process to die with its parent: the torchrun launcher for a worker, the worker for a
    DataLoader worker forked from it (once per process; a no-op outside torchrun)."""
    global _armed_in
    if _armed_in == os.getpid() or not started_by_torchrun() or os.environ.get(OPT_OUT, "") not in ("", "0"):
        return
    _armed_in = os.getpid()
    parent = os.getppid()
    armed = _parent_death_signal(signal.SIGKILL)
    if not can_be_launcher(os.getppid()):
        _orphaned(
            f"the torchrun launcher died before this worker started (its parent is now pid {os.getppid()})"
        )
    if not armed:
        threading.Thread(target=_poll, args=(parent,), daemon=True, name="distill-lifeline").start()
