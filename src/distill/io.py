"""Atomic file writes: write to a temporary name beside the target, fsync, rename."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_path(path: str | Path) -> None:
    """Flush a file's data, or a directory's entries (a rename is durable once its directory is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; on success fsync it and rename over ``path``.

    A crash or exception leaves the target untouched (old content or absent) and removes the
    temporary file, so readers never see a partial file.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.fchmod(fd, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the file a normal file's mode
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        fsync_path(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


TMP_FOLDER_PREFIX = ".tmp-"  # atomic_folder's staging and set-aside folders: an interrupted write


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path``; on success it replaces ``path`` whole.

    An existing folder is first renamed aside, then the staging folder renamed to ``path`` (a folder
    cannot be renamed over a non-empty one): a reader sees the old folder or the new one, never a mix,
    except between the two renames, when it sees neither. An exception, a failed swap included, leaves
    ``path`` as it was (the old folder is moved back). Both temporary folders are named
    ``.tmp-<name>.*``; a process killed part way leaves them behind.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f"{TMP_FOLDER_PREFIX}{target.name}.", suffix=".tmp", dir=target.parent)
    )
    old = staging.with_name(f"{staging.name}.old")
    try:
        yield staging
        for item in [*staging.rglob("*"), staging]:
            fsync_path(item)
        if target.exists():
            os.replace(target, old)
        try:
            os.replace(staging, target)
        except BaseException:
            if old.exists():
                os.replace(old, target)
            raise
        fsync_path(target.parent)
    finally:
        for leftover in (staging, old):
            if leftover.exists():
                shutil.rmtree(leftover)
