"""The README is for users: every file it names exists and its Python example runs as printed."""

from __future__ import annotations

import re
from pathlib import Path

import av
import pytest
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
    for target in re.findall(r"^(\w+):", (REPO / "Makefile").read_text(), flags=re.M):
        assert target  # Makefile parses into targets
    for command in ("make demo", "make test", "make bench", "make setup"):
        assert command.split()[1] + ":" in (REPO / "Makefile").read_text(), command


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
