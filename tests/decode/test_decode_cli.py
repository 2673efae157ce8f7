"""The command line on real files: an image, a folder, a video (round trip through PyAV), bad media."""

from __future__ import annotations

import json
import re
import runpy
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from distill.decode.cli import build_parser, main, run
from distill.synthetic import render_scene, write_video

FAST_MASKS = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]


def test_video_round_trip_preserves_frame_count_and_rate(tmp_path: Path, checkpoint: Path) -> None:
    video = write_video(tmp_path / "walk.mp4", frames=5, size=(80, 64), fps=12)
    out = tmp_path / "out"
    argv = [
        "--checkpoint",
        str(checkpoint),
        "--media",
        str(video),
        "--output",
        str(out),
        "--targets",
        "pca,pixels",
    ]
    assert main([*argv, "--compare-teachers"]) == 0
    with av.open(str(out / "walk.mp4")) as container:
        stream = container.streams.video[0]
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        assert stream.average_rate == Fraction(12)
    assert len(decoded) == 5
    assert len({d.shape for d in decoded}) == 1
    height, width, _ = decoded[0].shape
    assert width > 4 * 192 and height > 2 * 192  # input, PCA, 2 pixel columns; student + teacher rows
    assert np.abs(decoded[0].astype(int) - decoded[4].astype(int)).mean() > 1  # the frames differ


def test_image_with_prompts_and_folder(tmp_path: Path, checkpoint: Path) -> None:
    image = tmp_path / "scene.jpg"
    render_scene(5, (120, 80)).convert("CMYK").save(image)
    out = tmp_path / "out"
    base = ["--checkpoint", str(checkpoint), "--output", str(out), *FAST_MASKS]
    assert (
        main(
            [*base, "--media", str(image), "--targets", "masks", "--points", "30,30", "--boxes", "2,2,40,40"]
        )
        == 0
    )
    grid = Image.open(out / "scene.png")
    assert grid.mode == "RGB" and grid.width > 3 * 192  # input, masks, prompts
    folder = tmp_path / "folder"
    for i, name in enumerate(["b.png", "a.png"]):
        folder.mkdir(exist_ok=True)
        render_scene(i, (64, 96)).save(folder / name)
    assert main([*base, "--media", str(folder), "--targets", "pca,depth"]) == 0
    assert (out / "a.png").is_file() and (out / "b.png").is_file()


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", r"nothere\.mp4: no such file"),
        ("garbage", r"garbage\.mp4: unreadable video"),
        ("float", r"float\.tiff: 32-bit float image"),
        ("point", r"point \(500\.0, 1\.0, label 1\) must lie in the 64x64 canonical view"),
        ("weights", r"--teacher-weights 'sam' must be NAME=HUB_ID_OR_PATH"),
    ],
)
def test_bad_input_is_a_clear_error(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str], setup: str, message: str
) -> None:
    media = tmp_path / "nothere.mp4"
    extra: list[str] = []
    if setup == "garbage":
        media = tmp_path / "garbage.mp4"
        media.write_bytes(b"\x00not a video" * 100)
    elif setup == "float":
        media = tmp_path / "float.tiff"
        Image.fromarray(np.zeros((8, 8), dtype=np.float32)).save(media)
    elif setup in ("point", "weights"):
        media = tmp_path / "ok.png"
        render_scene(0).save(media)
        extra = ["--points", "500,1"] if setup == "point" else ["--teacher-weights", "sam"]
    argv = ["--checkpoint", str(checkpoint), "--media", str(media), "--output", str(tmp_path / "o"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and re.search(message, err), err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_checkpoint_from_other_teachers_is_refused(tmp_path: Path, checkpoint: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    for item in checkpoint.rglob("*"):
        target = other / item.relative_to(checkpoint)
        if item.is_dir():
            target.mkdir(exist_ok=True)
        else:
            target.write_bytes(item.read_bytes())
    header = json.loads((other / "config.json").read_text())
    header["config"]["teachers"]["depth_anything"]["input_size"] = 518  # trained against another model
    (other / "config.json").write_text(json.dumps(header))
    media = tmp_path / "x.png"
    render_scene(1).save(media)
    argv = ["--checkpoint", str(other), "--media", str(media), "--output", str(tmp_path / "o")]
    with pytest.raises(ValueError, match=r"trained against a 'depth_anything' teacher.*input_size 518 vs 56"):
        run(build_parser().parse_args([*argv, "--teachers-source", "tiny", "--targets", "depth"]))


@pytest.mark.parametrize("entry", ["script", "module"])
def test_script_and_module_entry_points_have_help(
    entry: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = Path(__file__).resolve().parents[2] / "scripts/decoding/decoding_example.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as stop:
        if entry == "script":
            runpy.run_path(str(script), run_name="__main__")
        else:
            runpy.run_module("distill.decode", run_name="__main__", alter_sys=True)
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "--compare-teachers" in out and "--teachers-source" in out and "--media" in out


def test_repeated_list_flags_accumulate_instead_of_replacing() -> None:
    """`--teacher-weights a=1 --teacher-weights b=2` (as the demo passes them) must keep both."""
    from distill.decode.cli import build_parser

    required = ["--checkpoint", "c", "--media", "m", "--output", "o"]
    weights = ["--teacher-weights=dinov2=/d", "--teacher-weights", "sam=tiny:/s", "mae=/m"]
    prompts = ["--points", "1,2", "--points=3,4,0", "--boxes", "0,0,4,4", "--boxes", "1,1,5,5"]
    args = build_parser().parse_args([*required, *weights, *prompts])
    assert args.teacher_weights == ["dinov2=/d", "sam=tiny:/s", "mae=/m"]
    assert args.points == ["1,2", "3,4,0"]
    assert args.boxes == ["0,0,4,4", "1,1,5,5"]
