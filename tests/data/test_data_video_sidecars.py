"""Per-frame sidecar arrays (.npz beside a video) land on the right frames; a mismatch is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_helpers import frame_metadata

from distill.preprocess.rejected import read_rejections
from distill.preprocess.subsample_videos import VideoConfig, subsample_videos
from distill.synthetic import write_video


def test_sidecar_rows_follow_their_frames(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    write_video(videos / "a.mp4", frames=10, size=(64, 64), fps=8, seed=1)
    write_video(videos / "b.mp4", frames=7, size=(64, 64), fps=8, seed=2)
    state_a = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    np.savez(videos / "a.npz", state=state_a, action=np.arange(10) * 10.0)
    counts = subsample_videos(VideoConfig(videos, tmp_path / "ds", size=32, samples_per_shard=4, every_n=3))
    assert counts == {"train": 4 + 3}
    frames = frame_metadata(tmp_path / "ds")
    with_arrays = {f["frame_index"]: f["arrays"] for f in frames if f["video_id"] == "a"}
    assert sorted(with_arrays) == [0, 3, 6, 9]
    for index, arrays in with_arrays.items():
        assert arrays == {"state": state_a[index].tolist(), "action": [index * 10.0]}
    assert all("arrays" not in f for f in frames if f["video_id"] == "b")  # no sidecar, no arrays
    assert read_rejections(tmp_path / "ds") == []  # the sidecar is read with its video, not rejected


@pytest.mark.parametrize("rows", [9, 11])
def test_sidecar_with_another_frame_count_is_refused(tmp_path: Path, rows: int) -> None:
    videos = tmp_path / "videos"
    write_video(videos / "a.mp4", frames=10, size=(64, 64), fps=8, seed=1)
    np.savez(videos / "a.npz", state=np.zeros((rows, 2)))
    with pytest.raises(ValueError, match=rf"a\.npz has {rows} rows but .*a\.mp4 decodes to"):
        subsample_videos(VideoConfig(videos, tmp_path / "ds", size=32, every_n=1))


def test_sidecar_arrays_of_unequal_length_or_pickled_objects_are_refused(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    write_video(videos / "a.mp4", frames=4, size=(64, 64), fps=8, seed=1)
    np.savez(videos / "a.npz", state=np.zeros((4, 2)), action=np.zeros(3))
    with pytest.raises(ValueError, match="different frame counts"):
        subsample_videos(VideoConfig(videos, tmp_path / "ds", size=32, every_n=1))
    np.savez(videos / "a.npz", state=np.array([{"x": 1}] * 4, dtype=object))
    with pytest.raises(ValueError, match=r"a\.npz: unreadable sidecar"):
        subsample_videos(VideoConfig(videos, tmp_path / "ds2", size=32, every_n=1))
