"""Every command that reads a student or a latent folder reports bad input as one ``error:`` line and
status 2 (distill.cli_errors), not a traceback; the decode command's own test covers each damage kind."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from distill.encode.cli import main as encode_main
from distill.evaluate.cli import main as evaluate_main
from distill.worldmodel.cli import main as worldmodel_main


def _truncate_weights(folder: Path) -> Path:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


@pytest.mark.parametrize("command", ["evaluate", "encode"])
def test_a_damaged_student_is_one_line_naming_the_file(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    folder = tmp_path / "student"
    shutil.copytree(checkpoint, folder)
    damaged = _truncate_weights(folder)
    mains: dict[str, Callable[[list[str]], int]] = {
        "evaluate": lambda argv: evaluate_main([*argv, "--output", str(tmp_path / "report")]),
        "encode": lambda argv: encode_main([*argv, str(tmp_path / "latents")]),
    }
    assert mains[command]([str(folder), str(tmp_path)]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"error: {damaged}") and "\n" not in line, line


def test_worldmodel_on_a_missing_latent_folder_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no_latents"
    assert worldmodel_main(["train", str(missing), str(tmp_path / "wm")]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: ") and str(missing) in line and "\n" not in line, line
