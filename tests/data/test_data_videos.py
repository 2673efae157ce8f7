"""Videos -> frame shards, rejected videos, and clips served in frame order."""

from __future__ import annotations

from pathlib import Path

import av
import pytest
import torch
from data_helpers import frame_metadata

from distill.data.clips import video_clips
from distill.data.manifest import load_manifest
from distill.distributed import DistContext
from distill.preprocess.calc_stats import StatsConfig, compute_stats
from distill.preprocess.extract import ExtractConfig, TeacherJob, run_extraction
from distill.preprocess.rejected import read_rejections
from distill.preprocess.subsample_videos import VideoConfig, subsample_videos
from distill.synthetic import write_video
from distill.teachers import Teacher


def _write_inputs(root: Path) -> None:
    write_video(root / "a.mp4", frames=10, size=(96, 80), fps=8, seed=1)
    write_video(root / "sub" / "b.mp4", frames=13, size=(80, 96), fps=8, seed=2)
    (root / "garbage.mp4").write_bytes(b"not a video at all" * 20)
    with av.open(str(root / "empty.mp4"), mode="w") as container:  # a valid file with no frames at all
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()
    (root / "notes.txt").write_text("x")


def test_every_nth_frame_with_metadata_and_rejections(tmp_path: Path) -> None:
    _write_inputs(tmp_path / "videos")
    counts = subsample_videos(
        VideoConfig(tmp_path / "videos", tmp_path / "ds", size=32, samples_per_shard=4, every_n=3)
    )
    assert counts == {"train": 4 + 5}  # frames 0,3,6,9 of a; 0,3,6,9,12 of b
    frames = frame_metadata(tmp_path / "ds")
    assert [(f["video_id"], f["frame_index"]) for f in frames] == [("a", i) for i in (0, 3, 6, 9)] + [
        ("sub__b", i) for i in (0, 3, 6, 9, 12)
    ]
    assert frames[1]["timestamp"] == pytest.approx(3 / 8) and frames[1]["fps"] == pytest.approx(8.0)
    assert frames[1]["key"] == "a_f000003" and frames[1]["source"] == "a.mp4"
    rejected = {r.source: r.reason for r in read_rejections(tmp_path / "ds")}
    assert set(rejected) == {"garbage.mp4", "empty.mp4", "notes.txt"}
    assert "unreadable video" in rejected["garbage.mp4"] and "no video stream" in rejected["empty.mp4"]
    manifest = load_manifest(tmp_path / "ds")
    assert (
        manifest.kind == "videos"
        and manifest.sampling == {"every_n": 3, "fps": None}
        and manifest.rejected == 3
    )


def test_frames_per_second_sampling(tmp_path: Path) -> None:
    write_video(tmp_path / "v" / "c.mp4", frames=16, size=(64, 64), fps=8)
    subsample_videos(VideoConfig(tmp_path / "v", tmp_path / "ds", size=32, fps=2.0))
    assert [f["frame_index"] for f in frame_metadata(tmp_path / "ds")] == [0, 4, 8, 12]
    with pytest.raises(ValueError, match="exactly one of every_n"):
        VideoConfig(tmp_path, tmp_path, every_n=2, fps=2.0)


def test_clips_in_frame_order_with_targets(tmp_path: Path, tiny_teachers: dict[str, Teacher]) -> None:
    _write_inputs(tmp_path / "videos")
    ds = tmp_path / "ds"
    subsample_videos(VideoConfig(tmp_path / "videos", ds, size=64, samples_per_shard=4, every_n=1))
    run_extraction(
        ExtractConfig(ds, (TeacherJob("dinov2", "tiny", None, "int8"),), progress=False),
        tiny_teachers,
        DistContext(),
    )
    compute_stats(StatsConfig(ds, ("dinov2",), "train", tmp_path / "stats"))
    clips = list(video_clips(ds, "train", clip_len=4, teachers=("dinov2",), stats_dir=tmp_path / "stats"))
    assert [(c.video_id, c.frame_indices) for c in clips] == [
        ("a", [0, 1, 2, 3]),
        ("a", [4, 5, 6, 7]),
        ("sub__b", [0, 1, 2, 3]),
        ("sub__b", [4, 5, 6, 7]),
        ("sub__b", [8, 9, 10, 11]),
    ]
    clip = clips[1]
    assert clip.frames.shape == (4, 3, 64, 64) and clip.frames.dtype == torch.uint8
    assert clip.targets["dinov2"].patch.shape == (4, 7, 7, 32) and clip.timestamps == pytest.approx(
        [0.5, 0.625, 0.75, 0.875]
    )
    overlapping = list(video_clips(ds, "train", clip_len=4, stride=2, allow_short=True))
    assert [c.frame_indices for c in overlapping if c.video_id == "a"] == [
        [0, 1, 2, 3],
        [2, 3, 4, 5],
        [4, 5, 6, 7],
        [6, 7, 8, 9],
    ]
    assert [c.frame_indices for c in overlapping if c.video_id == "sub__b"][-1] == [
        10,
        11,
        12,
    ]  # the short tail
    assert overlapping[0].targets == {}
