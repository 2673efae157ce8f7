"""The README is for users: every file it names exists and its Python example runs as printed."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import av
import pytest
import tomllib
import torch

from distill.models import Student, StudentConfig
from distill.stats import StatsAccumulator
from distill.teachers import load_teacher

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def test_every_script_and_doc_the_readme_names_exists() -> None:
    named = set(re.findall(r"(?:scripts|docs|benchmarks)/[\w/.-]+\.(?:py|md|png)", README))
    assert len(named) > 10
    missing = sorted(p for p in named if not (REPO / p).is_file())
    assert not missing, f"README names files that do not exist: {missing}"


def test_every_make_target_the_readme_names_exists() -> None:
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), flags=re.M))
    named = set(re.findall(r"\bmake ([\w-]+)", README))
    assert {"setup", "demo", "test", "lint", "format", "typecheck", "bench"} <= named
    assert named <= targets, f"README names make targets the Makefile lacks: {sorted(named - targets)}"


def test_the_readme_shows_every_console_script_and_module() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(re.findall(r"\b(distill-[a-z-]+)", README)) == set(scripts)
    modules = set(re.findall(r"python -m (distill(?:\.\w+)*)", README))
    assert {"distill.preprocess.extract", "distill.train", "distill.decode", "distill.demo"} <= modules
    unknown = sorted(m for m in modules if importlib.util.find_spec(m) is None)
    assert not unknown, f"README runs modules that do not exist: {unknown}"


def test_the_python_api_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    teacher = load_teacher("dinov2", "tiny", device="cpu")
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    accumulator = StatsAccumulator("dinov2")
    accumulator.add(teacher(images))
    config = StudentConfig.from_preset("tiny", {"dinov2": teacher.spec}, image_size=32, d_z=16)
    Student(config, load_pretrained=False).save_pretrained(
        tmp_path / "student", {"dinov2": accumulator.finish()}
    )

    code = README.split("```python\n", 1)[1].split("```", 1)[0]
    assert '"runs/RUN/student"' in code
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(code.replace("runs/RUN/student", str(tmp_path / "student")), "README.md", "exec"), namespace)

    z = namespace["z"]
    assert isinstance(z, torch.Tensor) and z.shape == (2, 8, 16)
    with av.open(str(tmp_path / "rollout.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 8
