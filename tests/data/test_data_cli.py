"""Every preprocessing command works from each of its entry points and does its job.

Each stage is a console script (``[project.scripts]``), a module (``python -m
distill.preprocess.<module>``) and a thin wrapper in scripts/preprocessing/; all three reach the same
``main``. The pipeline below runs every stage through one of those routes on real (tiny) inputs
and checks what it wrote, printed and returned.
"""

from __future__ import annotations

import json
import runpy
import shutil
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import tomllib
from data_helpers import Built

from distill.data.manifest import load_manifest
from distill.stats import FeatureStats
from distill.synthetic import write_image_folder, write_video

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "preprocessing"
# console script -> (wrapper in scripts/preprocessing, module)
COMMANDS = {
    "distill-organize": ("organize_webdataset.py", "distill.preprocess.organize"),
    "distill-subsample-videos": ("subsample_videos.py", "distill.preprocess.subsample_videos"),
    "distill-extract": ("feature_extraction.py", "distill.preprocess.extract"),
    "distill-stats": ("calc_feature_stats.py", "distill.preprocess.calc_stats"),
    "distill-check": ("check_dataset.py", "distill.preprocess.check"),
}
# runpy warns that the module is already imported (by this test process); running it again is the point.
pytestmark = pytest.mark.filterwarnings("ignore:.*found in sys.modules after import:RuntimeWarning")

Run = Callable[[list[str]], int]


def _entry_point(name: str) -> Callable[[list[str]], int]:
    (point,) = entry_points(group="console_scripts", name=name)
    main: Callable[[list[str]], int] = point.load()
    return main


def _exit_code(call: Callable[[], object]) -> int:
    """The exit status a shell would see: the SystemExit code, or the value ``sys.exit`` gets."""
    try:
        result = call()
    except SystemExit as exc:
        result = exc.code
    assert isinstance(result, int)
    return result


def route(kind: str, command: str, monkeypatch: pytest.MonkeyPatch) -> Run:
    """Run ``command`` with argv through its console script, scripts/ wrapper or module; -> exit status."""
    script, module = COMMANDS[command]

    def run(argv: list[str]) -> int:
        if kind == "console":
            main = _entry_point(command)
            return _exit_code(lambda: main(argv))
        target = str(SCRIPTS / script) if kind == "script" else module
        monkeypatch.setattr(sys, "argv", [target, *argv])
        runner = runpy.run_path if kind == "script" else runpy.run_module
        return _exit_code(lambda: runner(target, run_name="__main__"))

    return run


def test_every_stage_is_a_console_script_and_every_script_wraps_it() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(COMMANDS) <= set(scripts)
    for command, (script, module) in COMMANDS.items():
        assert scripts[command] == f"{module}:main"
        assert _entry_point(command) is runpy.run_path(str(SCRIPTS / script))["main"]


@pytest.mark.parametrize("kind", ["console", "script", "module"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_from_every_route(
    command: str, kind: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert route(kind, command, monkeypatch)(["--help"]) == 0
    assert "usage:" in capsys.readouterr().out


def _printed(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    out = capsys.readouterr().out.strip().splitlines()
    parsed: dict[str, object] = json.loads(out[-1])
    return parsed


def test_the_stages_run_from_their_entry_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    write_image_folder(tmp_path / "src" / "train", classes=2, per_class=4, size=(48, 40), seed=0)
    write_image_folder(tmp_path / "src" / "val", classes=2, per_class=2, size=(40, 48), seed=1)
    dataset = tmp_path / "ds"

    organize = route("console", "distill-organize", monkeypatch)
    assert organize([str(tmp_path / "src"), str(dataset), "--size", "32", "--samples-per-shard", "3"]) == 0
    assert _printed(capsys)["counts"] == {"train": 8, "val": 4}
    manifest = load_manifest(dataset)
    assert manifest.canonical_size == 32 and len(manifest.splits["train"].shards) == 3

    extract = route("module", "distill-extract", monkeypatch)
    argv = [str(dataset), "--teachers", "dinov2", "--source", "tiny", "--device", "cpu", "--no-progress"]
    assert extract([*argv, "--storage", "bf16"]) == 0
    assert _printed(capsys) == {"rank": 0, "written": 5, "skipped": 0, "samples": 12}
    assert load_manifest(dataset).teachers["dinov2"].storage == "bf16"
    assert extract([*argv, "--storage", "bf16"]) == 0  # a rerun resumes: every shard is complete
    assert _printed(capsys) == {"rank": 0, "written": 0, "skipped": 5, "samples": 0}

    stats = route("script", "distill-stats", monkeypatch)
    assert stats([str(dataset), "--output-dir", str(tmp_path / "stats")]) == 0
    assert _printed(capsys)["dinov2"] == {"count": 8, "path": str(tmp_path / "stats" / "dinov2.safetensors")}
    assert FeatureStats.load(tmp_path / "stats" / "dinov2.safetensors").count == 8

    check = route("console", "distill-check", monkeypatch)
    assert check([str(dataset), "--stats-dir", str(tmp_path / "stats")]) == 0
    assert capsys.readouterr().out.startswith(f"OK {dataset}: 5 shards, 12 samples")
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    shard = broken / "dinov2" / manifest.splits["train"].shards[0].name
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a truncated feature shard
    assert route("module", "distill-check", monkeypatch)([str(broken)]) == 1
    assert "FAILED" in capsys.readouterr().err

    write_video(tmp_path / "videos" / "a.mp4", frames=10, size=(48, 40), fps=8, seed=1)
    videos = route("script", "distill-subsample-videos", monkeypatch)
    out = tmp_path / "frames"
    assert videos([str(tmp_path / "videos"), str(out), "--every-n", "2", "--size", "32"]) == 0
    assert _printed(capsys)["counts"] == {"train": 5}
    assert load_manifest(out).splits["train"].count == 5


def test_bad_options_are_refused(built: Built) -> None:
    from distill.preprocess.extract import build_parser, config_from_args

    with pytest.raises(ValueError, match="not extracted"):
        config_from_args(
            build_parser().parse_args([str(built.dataset), "--teachers", "clip", "--stored-grid", "sam=4x4"])
        )
    with pytest.raises(ValueError, match="grid must look like 32x32"):
        config_from_args(
            build_parser().parse_args([str(built.dataset), "--teachers", "sam", "--stored-grid", "sam=4by4"])
        )
    with pytest.raises(ValueError, match="--weights needs --source hub"):
        config_from_args(
            build_parser().parse_args(
                [str(built.dataset), "--teachers", "sam", "--source", "tiny", "--weights", "sam=x"]
            )
        )
    cfg = config_from_args(
        build_parser().parse_args(
            [
                str(built.dataset),
                "--teachers",
                "sam",
                "clip",
                "--storage",
                "bf16",
                "--storage-for",
                "sam=int8",
            ]
        )
    )
    assert [(j.name, j.storage, j.source) for j in cfg.teachers] == [
        ("sam", "int8", "hub"),
        ("clip", "bf16", "hub"),
    ]
