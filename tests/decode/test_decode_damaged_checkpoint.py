"""A damaged checkpoint folder (a truncated ``model.safetensors``, a cut-off stats file, garbage
``config.json``) is a one-line error naming the file, from the decode script as a user runs it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from distill.decode.cli import main
from distill.models.student import Student
from distill.synthetic import render_scene
from distill.tensorfile import UnreadableFileError

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "decoding" / "decoding_example.py"


def _damage(folder: Path, what: str) -> Path:
    if what == "weights":
        path = folder / "model.safetensors"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif what == "weights-header":
        path = folder / "model.safetensors"
        path.write_bytes(path.read_bytes()[:5])
    elif what == "stats":
        path = folder / "stats" / "dinov2.safetensors"
        path.write_bytes(path.read_bytes()[:-3])
    else:
        path = folder / "config.json"
        path.write_text(path.read_text()[:40])
    return path


FIX = {
    "weights": "copy it again",
    "weights-header": "copy it again",
    "stats": "compute them",
    "config": "copy it again",
}


@pytest.mark.parametrize("what", ["weights", "weights-header", "stats", "config"])
def test_damaged_checkpoint_is_a_clear_error_naming_the_file(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str], what: str
) -> None:
    folder = tmp_path / "student"
    shutil.copytree(checkpoint, folder)
    damaged = _damage(folder, what)
    with pytest.raises(UnreadableFileError, match=re.escape(str(damaged))):
        Student.from_pretrained(folder)
    media = tmp_path / "x.png"
    render_scene(0).save(media)
    argv = ["--checkpoint", str(folder), "--media", str(media), "--output", str(tmp_path / "o")]
    assert main(argv) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"error: {damaged}") and "\n" not in line, line
    assert ("truncated" in line or "not valid JSON" in line) and FIX[what] in line, line
    if what == "weights":  # the command line, as a user runs it: no traceback
        result = subprocess.run(
            [sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 2 and result.stderr.strip() == line, result.stderr
