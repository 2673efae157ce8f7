"""The install is reproducible: ``make setup`` installs the tested versions in constraints.txt.

constraints.txt pins every package of the project's dependency closure (dev and sim extras) to the
version this suite runs with; ``make lock`` rewrites it from the venv. Before it existed, every
dependency was an open ``>=`` range and a fresh machine could resolve releases the suite never saw.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "constraints.txt"


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            out[req.name] = spec.version
    return out


def test_every_dependency_is_pinned_to_a_public_release() -> None:
    locked = pins(LOCK)
    for name in ("torch", "transformers", "safetensors", "hydra-core", "pytest", "gym-pusht"):
        assert name in locked, name
    assert "distill" not in locked  # the project itself is installed from the checkout
    assert all(Version(v).local is None for v in locked.values())  # PyPI has no +cpu / +cu builds


def test_the_lock_is_the_set_this_suite_runs_with(tmp_path: Path) -> None:
    """Every installed package of the project's closure is at its locked version (``make setup`` gives that)."""
    fresh = tmp_path / "constraints.txt"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "lock_constraints.py"), "--output", str(fresh)],
        check=True,
        capture_output=True,
    )
    locked, installed = pins(LOCK), pins(fresh)
    # a package locked but not installed here is fine (platform-only wheels such as nvidia-* on Linux)
    drift = {
        name: (locked.get(name), version)
        for name, version in installed.items()
        if locked.get(name) != version
    }
    assert not drift, (
        f"this venv differs from constraints.txt (locked, installed): {drift}; reinstall with make clean setup, "
        "or after make test passes on the new set, make lock"
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_setup_installs_with_the_constraints() -> None:
    def commands(*args: str) -> str:
        return subprocess.run(
            ["make", "-n", "-B", ".venv/.installed", *args],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    install = next(line for line in commands().splitlines() if "pip install -q -e" in line)
    assert install.endswith("-c constraints.txt"), install
    unlocked = next(line for line in commands("CONSTRAINTS=").splitlines() if "pip install -q -e" in line)
    assert "-c " not in unlocked, unlocked
    assert "constraints.txt" in (REPO / "Dockerfile").read_text()
