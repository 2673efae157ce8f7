"""Atomic writes: the target is either the old content or the new, never a partial file."""

import os
import stat
from pathlib import Path

import pytest

from distill.io import atomic_folder, atomic_path, atomic_write_text


def test_atomic_write_replaces_content_and_leaves_no_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.txt"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("half-written")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_atomic_files_get_the_mode_a_plain_write_would(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic = tmp_path / "atomic.txt"
    atomic_write_text(atomic, "x")
    assert stat.S_IMODE(atomic.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_a_folder_replaces_the_old_one_whole(tmp_path: Path) -> None:
    target = tmp_path / "folder"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_folder(target) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]  # no staging or old folder left


def test_a_failed_swap_moves_the_old_folder_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: the second rename (staging -> folder) fails after the old folder was moved aside."""
    target = tmp_path / "folder"
    target.mkdir()
    (target / "old.txt").write_text("old")
    rename = os.replace
    calls = []

    def second_fails(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append((Path(src), Path(dst)))
        if len(calls) == 2:
            raise OSError("injected: the swap failed")
        rename(src, dst)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(OSError, match="injected"), atomic_folder(target) as staging:
        (staging / "new.txt").write_text("new")
    assert calls[1] == (staging, target)
    assert (target / "old.txt").read_text() == "old" and not (target / "new.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]
