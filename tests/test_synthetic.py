"""Procedural data is deterministic, so tests and the demo see the same pixels every run."""

from pathlib import Path

import av
import numpy as np

from distill.synthetic import render_scene, write_image_folder, write_video


def test_same_seed_same_pixels_other_seed_other_pixels() -> None:
    first, again, other = (np.asarray(render_scene(s, (40, 30))) for s in (7, 7, 8))
    assert first.shape == (30, 40, 3)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_image_folder_layout(tmp_path: Path) -> None:
    paths = write_image_folder(tmp_path, classes=2, per_class=3, size=(20, 16))
    assert sorted(p.relative_to(tmp_path).as_posix() for p in paths) == [
        f"class_{k}/img_{j:04d}.jpg" for k in range(2) for j in range(3)
    ]


def test_video_has_the_requested_frames_size_and_rate(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.mp4", frames=6, size=(32, 24), fps=5)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert stream.average_rate == 5
    assert len(frames) == 6 and frames[0].shape == (24, 32, 3)
    assert not np.array_equal(frames[0], frames[-1])  # the shapes move
