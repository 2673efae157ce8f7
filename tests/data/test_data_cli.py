"""Every preprocessing command has --help, runs as a script and as ``python -m distill.data.<module>``."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
from data_helpers import Built

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "preprocessing"
COMMANDS = {
    "organize_webdataset.py": "distill.preprocess.organize",
    "subsample_videos.py": "distill.preprocess.subsample_videos",
    "feature_extraction.py": "distill.preprocess.extract",
    "calc_feature_stats.py": "distill.preprocess.calc_stats",
    "check_dataset.py": "distill.preprocess.check",
}
# runpy warns that the module is already imported (by this test process); running it again is the point.
pytestmark = pytest.mark.filterwarnings("ignore:.*found in sys.modules after import:RuntimeWarning")


@pytest.mark.parametrize(("script", "module"), COMMANDS.items())
def test_help_from_script_and_module(
    script: str, module: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for run, target in ((runpy.run_path, str(SCRIPTS / script)), (runpy.run_module, module)):
        monkeypatch.setattr(sys, "argv", [target, "--help"])
        with pytest.raises(SystemExit) as exit_info:
            run(target, run_name="__main__")
        assert exit_info.value.code == 0
        assert "usage:" in capsys.readouterr().out


def test_check_runs_as_a_module(
    built: Built, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["check", str(built.dataset)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("distill.preprocess.check", run_name="__main__")
    assert exit_info.value.code == 0 and "OK" in capsys.readouterr().out


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
