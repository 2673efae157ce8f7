"""LeRobot dataset folders (v2.1 and v3.0 layouts, written here with pyarrow + PyAV as documented) -> frames
whose metadata carries each frame's action and state; a missing camera and a short video are handled."""

from __future__ import annotations

import io
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from distill.data.manifest import load_manifest
from distill.data.shards import iter_shard
from distill.decode.media import write_mp4
from distill.preprocess.rejected import read_rejections
from distill.preprocess.subsample_videos import VideoConfig, subsample_videos

FPS = 10
CAMERA = "observation.images.top"
LENGTHS = (6, 5)  # frames per episode


def grey(level: int) -> Image.Image:
    return Image.new("RGB", (64, 64), (level, level, level))


def level(episode: int, frame: int) -> int:
    """Each frame of the dataset has its own grey level, so a frame paired with the wrong row shows."""
    return 10 + 20 * (sum(LENGTHS[:episode]) + frame)


def rows(episode: int) -> dict[str, pa.Array]:
    n = LENGTHS[episode]
    return {
        "episode_index": pa.array([episode] * n, pa.int64()),
        "frame_index": pa.array(range(n), pa.int64()),
        "timestamp": pa.array([t / FPS for t in range(n)], pa.float32()),
        "action": pa.array([[episode * 100.0 + t, float(episode)] for t in range(n)], pa.list_(pa.float32())),
        "observation.state": pa.array([[t, 2.0 * t, episode] for t in range(n)], pa.list_(pa.float32())),
    }


def info(version: str, data_path: str, video_path: str) -> dict[str, object]:
    features = {
        CAMERA: {"dtype": "video", "shape": [64, 64, 3]},
        "action": {"dtype": "float32", "shape": [2]},
        "observation.state": {"dtype": "float32", "shape": [3]},
    }
    return {
        "codebase_version": version,
        "fps": FPS,
        "chunks_size": 1000,
        "data_path": data_path,
        "video_path": video_path,
        "features": features,
    }


def write_v2(root: Path, short: bool) -> None:
    (root / "meta").mkdir(parents=True)
    data = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
    video = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
    (root / "meta" / "info.json").write_text(json.dumps(info("v2.1", data, video)))
    lines = [json.dumps({"episode_index": e, "length": n}) for e, n in enumerate(LENGTHS)]
    (root / "meta" / "episodes.jsonl").write_text("\n".join(lines) + "\n")
    for episode, n in enumerate(LENGTHS):
        fields = {"episode_chunk": 0, "episode_index": episode, "video_key": CAMERA}
        path = root / data.format(**fields)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(rows(episode)), path)
        kept = n - 2 if short and episode == 1 else n
        (root / video.format(**fields)).parent.mkdir(parents=True, exist_ok=True)
        write_mp4(
            [grey(level(episode, t)) for t in range(kept)], root / video.format(**fields), Fraction(FPS)
        )


def write_v3(root: Path, short: bool) -> None:
    """Both episodes in one data file and one video file; the episodes table says where each starts."""
    data = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    video = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info("v3.0", data, video)))
    tables = [pa.table(rows(e)) for e in range(len(LENGTHS))]
    (root / "data" / "chunk-000").mkdir(parents=True)
    pq.write_table(pa.concat_tables(tables), root / data.format(chunk_index=0, file_index=0))
    starts = [sum(LENGTHS[:e]) / FPS for e in range(len(LENGTHS))]
    episodes = {
        "episode_index": list(range(len(LENGTHS))),
        "length": list(LENGTHS),
        "data/chunk_index": [0, 0],
        "data/file_index": [0, 0],
        f"videos/{CAMERA}/chunk_index": [0, 0],
        f"videos/{CAMERA}/file_index": [0, 0],
        f"videos/{CAMERA}/from_timestamp": starts,
        f"videos/{CAMERA}/to_timestamp": [s + n / FPS for s, n in zip(starts, LENGTHS, strict=True)],
    }
    pq.write_table(pa.table(episodes), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    frames = [grey(level(e, t)) for e, n in enumerate(LENGTHS) for t in range(n)]
    path = root / video.format(video_key=CAMERA, chunk_index=0, file_index=0)
    path.parent.mkdir(parents=True)
    write_mp4(frames[:-2] if short else frames, path, Fraction(FPS))


WRITERS = {"v2.1": write_v2, "v3.0": write_v3}


def frames_by_video(dataset: Path) -> dict[str, list[tuple[dict, float]]]:
    out: dict[str, list[tuple[dict, float]]] = {}
    for info_ in load_manifest(dataset).splits.values():
        for shard in info_.shards:
            for sample in iter_shard(dataset / "images" / shard.name):
                meta = json.loads(sample.files["json"])
                brightness = float(np.asarray(Image.open(io.BytesIO(sample.files["jpg"]))).mean())
                out.setdefault(meta["video_id"], []).append((meta, brightness))
    return out


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_each_frame_carries_its_rows(layout: str, tmp_path: Path) -> None:
    WRITERS[layout](tmp_path / "robot", short=False)
    counts = subsample_videos(
        VideoConfig(tmp_path / "robot", tmp_path / "ds", size=32, every_n=1, camera=CAMERA)
    )
    assert counts == {"train": sum(LENGTHS)}
    videos = frames_by_video(tmp_path / "ds")
    assert sorted(videos) == ["episode_000000", "episode_000001"]
    for episode in range(len(LENGTHS)):
        frames = videos[f"episode_{episode:06d}"]
        assert [m["frame_index"] for m, _ in frames] == list(range(LENGTHS[episode]))
        for t, (meta, brightness) in enumerate(frames):
            assert meta["arrays"] == {
                "action": [episode * 100.0 + t, episode],
                "observation.state": [t, 2.0 * t, episode],
            }
            assert meta["timestamp"] == pytest.approx(t / FPS) and meta["episode_index"] == episode
            assert abs(brightness - level(episode, t)) < 6  # the image of that very frame
    assert read_rejections(tmp_path / "ds") == []


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_an_episode_with_a_short_video_is_skipped_and_listed(layout: str, tmp_path: Path) -> None:
    WRITERS[layout](tmp_path / "robot", short=True)
    counts = subsample_videos(
        VideoConfig(tmp_path / "robot", tmp_path / "ds", size=32, every_n=2, camera=CAMERA)
    )
    assert counts == {"train": 3}  # episode 0, frames 0, 2, 4; nothing of episode 1
    assert [m["frame_index"] for m, _ in frames_by_video(tmp_path / "ds")["episode_000000"]] == [0, 2, 4]
    (rejection,) = read_rejections(tmp_path / "ds")
    assert rejection.source.endswith("episode 1") and "3 of the episode's 5 rows" in rejection.reason


def test_a_camera_that_does_not_exist_lists_the_keys(tmp_path: Path) -> None:
    write_v2(tmp_path / "robot", short=False)
    with pytest.raises(
        ValueError,
        match=r"no camera 'observation.images.wrist'; its video keys are \['observation.images.top'\]",
    ):
        subsample_videos(
            VideoConfig(tmp_path / "robot", tmp_path / "ds", every_n=1, camera="observation.images.wrist")
        )
    with pytest.raises(ValueError, match="is a LeRobot dataset: choose a camera with --camera"):
        subsample_videos(VideoConfig(tmp_path / "robot", tmp_path / "ds", every_n=1))
