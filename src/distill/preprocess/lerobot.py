"""LeRobot dataset folders as episodes: one camera's video span and the episode's per-frame rows.

Layouts (``meta/info.json`` says which: ``codebase_version``):

- v2.0 / v2.1: one parquet and one MP4 per episode. ``meta/episodes.jsonl`` lists the episodes;
  ``data_path`` and ``video_path`` are templates over ``episode_chunk`` (= episode // ``chunks_size``),
  ``episode_index`` and ``video_key``. An episode's video starts at time 0.
- v3.0: episodes packed into shared files. ``meta/episodes/chunk-*/file-*.parquet`` has one row per
  episode with ``data/chunk_index``, ``data/file_index`` and, per camera, ``videos/<key>/chunk_index``,
  ``videos/<key>/file_index`` and ``videos/<key>/from_timestamp`` (where the episode starts in the file);
  ``data_path``/``video_path`` are templates over ``chunk_index``, ``file_index`` and ``video_key``.

Per-frame rows come from the data parquet (``episode_index``, ``frame_index``, ``timestamp`` relative to
the episode start, and the carried features ``action`` and ``observation.state``). A decoded frame
belongs to the row whose ``from_timestamp + timestamp`` is within half a frame period of its time;
:func:`match_frames` pairs them one to one or raises :class:`EpisodeMismatch`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow.parquet as pq
from PIL import Image

CARRIED = ("action", "observation.state")  # LeRobot feature names, kept as the frames' array names


class EpisodeMismatch(ValueError):
    """An episode's video frames do not pair one to one with its parquet rows."""


@dataclass(frozen=True)
class LeRobotEpisode:
    index: int
    video: Path
    start: float  # seconds into the video file where the episode begins
    frame_indices: np.ndarray  # int64 [T], episode-relative
    timestamps: np.ndarray  # float64 [T], seconds from the episode start
    arrays: dict[str, np.ndarray]  # carried feature -> float64 [T, K]


def is_lerobot(folder: Path) -> bool:
    return (folder / "meta" / "info.json").is_file()


def read_info(root: Path) -> dict[str, Any]:
    path = root / "meta" / "info.json"
    try:
        info: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable LeRobot info ({exc})") from exc
    for key in ("codebase_version", "fps", "features", "data_path", "video_path"):
        if key not in info:
            raise ValueError(f"{path}: no {key!r}; not a LeRobot v2/v3 dataset")
    return info


def camera_keys(info: dict[str, Any]) -> list[str]:
    return sorted(name for name, feature in info["features"].items() if feature.get("dtype") == "video")


def lerobot_episodes(root: Path, camera: str) -> Iterator[LeRobotEpisode]:
    """Every episode of ``root`` with ``camera``'s video, in episode order."""
    info = read_info(root)
    keys = camera_keys(info)
    if camera not in keys:
        raise ValueError(
            f"{root}/meta/info.json has no camera {camera!r}; its video keys are {keys}: pass one with --camera"
        )
    version = str(info["codebase_version"])
    if version.startswith("v2"):
        yield from _v2_episodes(root, info, camera)
    elif version.startswith("v3"):
        yield from _v3_episodes(root, info, camera)
    else:
        raise ValueError(f"{root}/meta/info.json: codebase_version {version!r}; v2.x and v3.x are supported")


def _rows(table: Any, where: str) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(frame indices, timestamps, carried arrays) of one episode's rows, in frame order."""
    names = set(table.column_names)
    for needed in ("frame_index", "timestamp"):
        if needed not in names:
            raise ValueError(f"{where}: no {needed!r} column; not a LeRobot data file")
    frames = np.asarray(table.column("frame_index").to_pylist(), dtype=np.int64)
    order = np.argsort(frames, kind="stable")
    timestamps = np.asarray(table.column("timestamp").to_pylist(), dtype=np.float64)[order]
    arrays = {}
    for name in CARRIED:
        if name in names:
            values = np.asarray(table.column(name).to_pylist(), dtype=np.float64)
            arrays[name] = values.reshape(len(values), -1)[order]
    return frames[order], timestamps, arrays


def _v2_episodes(root: Path, info: dict[str, Any], camera: str) -> Iterator[LeRobotEpisode]:
    listing = root / "meta" / "episodes.jsonl"
    if not listing.is_file():
        raise ValueError(f"{listing} is missing; a LeRobot v2 dataset lists its episodes there")
    indices = [
        int(json.loads(line)["episode_index"]) for line in listing.read_text().splitlines() if line.strip()
    ]
    chunk_size = int(info.get("chunks_size", 1000))
    for index in sorted(indices):
        fields = {"episode_chunk": index // chunk_size, "episode_index": index, "video_key": camera}
        data = root / info["data_path"].format(**fields)
        frames, timestamps, arrays = _rows(pq.read_table(data), str(data))
        yield LeRobotEpisode(
            index, root / info["video_path"].format(**fields), 0.0, frames, timestamps, arrays
        )


def _v3_episodes(root: Path, info: dict[str, Any], camera: str) -> Iterator[LeRobotEpisode]:
    files = sorted((root / "meta" / "episodes").glob("*/*.parquet"))
    if not files:
        raise ValueError(
            f"{root}/meta/episodes holds no parquet; a LeRobot v3 dataset lists its episodes there"
        )
    episodes = [row for path in files for row in pq.read_table(path).to_pylist()]
    video = f"videos/{camera}/"
    tables: dict[Path, Any] = {}
    for row in sorted(episodes, key=lambda r: int(r["episode_index"])):
        index = int(row["episode_index"])
        data = root / info["data_path"].format(
            chunk_index=row["data/chunk_index"], file_index=row["data/file_index"]
        )
        if data not in tables:
            tables[data] = pq.read_table(data)
        table = tables[data]
        mine = np.asarray(table.column("episode_index").to_pylist()) == index
        frames, timestamps, arrays = _rows(table.filter(mine), f"{data} episode {index}")
        path = root / info["video_path"].format(
            video_key=camera, chunk_index=row[video + "chunk_index"], file_index=row[video + "file_index"]
        )
        yield LeRobotEpisode(index, path, float(row[video + "from_timestamp"]), frames, timestamps, arrays)


def match_frames(episode: LeRobotEpisode, fps: float) -> list[Image.Image]:
    """The decoded frame of each row, in row order; raises EpisodeMismatch unless they pair one to one."""
    if len(episode.timestamps) == 0:
        raise EpisodeMismatch("the episode has no rows")
    tolerance = 0.5 / fps
    wanted = episode.start + episode.timestamps
    images: list[Image.Image] = []
    with av.open(str(episode.video)) as container:
        stream = container.streams.video[0]
        if episode.start > 0 and stream.time_base is not None:
            container.seek(int(episode.start / stream.time_base), stream=stream, backward=True)
        for frame in container.decode(stream):
            time = float(frame.time) if frame.time is not None else 0.0
            if time < wanted[0] - tolerance:
                continue
            if len(images) == len(wanted):
                break
            expected = wanted[len(images)]
            if abs(time - expected) > tolerance:
                raise EpisodeMismatch(
                    f"the frame decoded at {time - episode.start:.3f}s matches no row (row {len(images)} "
                    f"is at {expected - episode.start:.3f}s)"
                )
            images.append(frame.to_image().convert("RGB"))
    if len(images) < len(wanted):
        raise EpisodeMismatch(
            f"{episode.video} holds frames for {len(images)} of the episode's {len(wanted)} rows "
            "(the video is shorter than its parquet)"
        )
    return images
