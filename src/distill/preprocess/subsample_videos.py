"""Videos -> frame shards in the image-shard format (canonical view JPEG + JSON metadata).

Keeps every ``every_n``-th decoded frame, or ``fps`` frames per second of presentation time.
Each frame's metadata holds ``video_id``, ``frame_index`` (in decode order), ``timestamp``
(seconds) and the video's ``fps``, so clips can be rebuilt in order (``distill.data.clips``).
Frames of a video are written contiguously and in order; a video goes wholly to one split
(``val`` when the hash of its path falls under ``val_fraction``). A LeRobot dataset folder
(``meta/info.json``, v2.x or v3 layout, see ``distill.preprocess.lerobot``) is read with ``camera``:
one video id ``episode_NNNNNN`` per episode, each frame's ``action`` and ``observation.state`` rows
carried in its metadata ``arrays``; an episode whose frames and rows do not pair one to one is skipped
and listed in rejected.txt. An unreadable video, one
without a video stream or without any decodable frame goes to rejected.txt; a video whose
decoding fails part way keeps the frames before the failure and is listed there too.

Paired videos (cross-domain alignment, docs/alignment.md): with ``target`` (``--target DIR``) each source
video pairs the target video at the same relative path, extension aside (``distill.preprocess.pairs``).
Both must decode to the same number of frames with the same aspect ratio; the kept frames of both are
written under the same keys, the source side to ``images/`` and the target side to ``target_images/``,
as ``distill-organize --target`` does for images. A video without a partner, or a pair whose frame counts
or shapes differ, is a line of rejected.txt naming both files; nothing of it is written. A pair's kept frames
are held (as JPEG) until both videos are read, then added to both sides together, so a target that turns
out shorter than counted is such a rejection too, and a decode error, named against the file it comes
from, keeps the same frames on both sides.
Run as ``python -m distill.preprocess.subsample_videos --help`` or scripts/preprocessing/subsample_videos.py.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

from distill.data.keys import make_keys, path_digest
from distill.data.manifest import IMAGES_DIR, TARGET_IMAGES_DIR, Manifest, ShardInfo, SplitInfo, save_manifest
from distill.data.shards import SplitWriter
from distill.geometry import canonical_view
from distill.preprocess.cli import config_from_args, setup_logging
from distill.preprocess.dataset_dir import prepare_dataset_dir
from distill.preprocess.lerobot import (
    EpisodeMismatch,
    LeRobotEpisode,
    is_lerobot,
    lerobot_episodes,
    match_frames,
    read_info,
)
from distill.preprocess.pairs import Partner, pair_folders, pairing_record, same_aspect
from distill.preprocess.rejected import Rejection, write_rejections

log = logging.getLogger(__name__)
VIDEO_EXTENSIONS = frozenset({".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v"})
SIDECAR_SUFFIX = ".npz"


@dataclass(frozen=True)
class VideoConfig:
    source: Path  # a video file or a folder of videos (any nesting)
    dataset: Path
    size: int = 224
    quality: int = 95
    samples_per_shard: int = 1000
    every_n: int | None = None  # keep frames 0, n, 2n, ...
    fps: float | None = None  # or keep this many frames per second
    val_fraction: float = 0.0
    overwrite: bool = False
    camera: str | None = None  # a LeRobot dataset folder's video key to read
    target: Path | None = None  # paired videos: the target folder (matched by relative path)

    def __post_init__(self) -> None:
        if self.target is not None and self.camera is not None:
            raise ValueError(
                "--target pairs plain video folders; a LeRobot dataset (--camera) has no target side"
            )
        if (self.every_n is None) == (self.fps is None):
            raise ValueError("give exactly one of every_n (keep every Nth frame) or fps (frames per second)")
        if self.every_n is not None and self.every_n < 1:
            raise ValueError(f"every_n must be >= 1, got {self.every_n}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")


@dataclass(frozen=True)
class Frame:
    index: int
    timestamp: float
    image: Image.Image


class FrameSelector:
    """Decides, frame by frame, which decoded frames to keep."""

    def __init__(self, every_n: int | None, fps: float | None) -> None:
        self.every_n, self.period = every_n, None if fps is None else 1.0 / fps
        self.next_time = 0.0
        self.seen = 0  # frames decoded so far, kept or not

    def keep(self, index: int, timestamp: float) -> bool:
        self.seen = index + 1
        if self.every_n is not None:
            return index % self.every_n == 0
        assert self.period is not None
        if timestamp + 1e-6 < self.next_time:
            return False
        while self.next_time <= timestamp + 1e-6:
            self.next_time += self.period
        return True


def sidecar_path(video: Path) -> Path:
    """The per-frame arrays of ``video``: the ``.npz`` beside it with the same stem."""
    return video.with_suffix(SIDECAR_SUFFIX)


@dataclass(frozen=True)
class Sidecar:
    """Numeric per-frame arrays of one video: row t of every array belongs to decoded frame t."""

    path: Path
    video: Path
    arrays: dict[str, np.ndarray]  # name -> float64 [T, K]

    @property
    def rows(self) -> int:
        return next(iter(self.arrays.values())).shape[0]

    def frame(self, index: int) -> dict[str, list[float]]:
        """Frame ``index``'s rows, as the frame metadata's ``arrays``."""
        if index >= self.rows:
            raise ValueError(self._mismatch(f"at least {index + 1}"))
        return {name: array[index].tolist() for name, array in self.arrays.items()}

    def check_frame_count(self, frames: int) -> None:
        if frames != self.rows:
            raise ValueError(self._mismatch(str(frames)))

    def _mismatch(self, frames: str) -> str:
        return (
            f"{self.path} has {self.rows} rows but {self.video} decodes to {frames} frames; "
            "a sidecar needs exactly one row per video frame (re-export it with the video)"
        )


def read_sidecar(video: Path) -> Sidecar | None:
    """The sidecar of ``video``, or None without one. Loaded with ``allow_pickle=False``: data, never code."""
    path = sidecar_path(video)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: np.asarray(archive[name]) for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: unreadable sidecar ({exc}); write it with numpy.savez") from exc
    if not arrays:
        raise ValueError(f"{path}: the sidecar holds no arrays; remove it or save per-frame arrays in it")
    for name, array in arrays.items():
        if array.ndim == 0 or not np.issubdtype(array.dtype, np.number):
            raise ValueError(
                f"{path}: array {name!r} must be numeric with one row per frame, got {array.dtype} {array.shape}"
            )
    lengths = {name: array.shape[0] for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"{path}: arrays have different frame counts {lengths}; one row per video frame each"
        )
    flat = {name: array.reshape(array.shape[0], -1).astype(np.float64) for name, array in arrays.items()}
    return Sidecar(path, video, flat)


def video_fps(path: Path) -> float | None:
    with av.open(str(path)) as container:
        if not container.streams.video:
            return None
        rate = container.streams.video[0].average_rate
        return None if rate is None else float(rate)


def iter_frames(path: Path, selector: FrameSelector, fps: float | None) -> Iterator[Frame]:
    """Decoded frames kept by ``selector``, in decode order. Raises av.FFmpegError on bad data."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        for index, frame in enumerate(container.decode(stream)):
            timestamp = frame.time if frame.time is not None else index / (fps or 1.0)
            if selector.keep(index, float(timestamp)):
                yield Frame(index, float(timestamp), frame.to_image().convert("RGB"))


def subsample_videos(cfg: VideoConfig) -> dict[str, int]:
    """Build ``cfg.dataset`` from the videos under ``cfg.source``; returns samples per split."""
    if cfg.camera is not None or (cfg.source.is_dir() and is_lerobot(cfg.source)):
        return _subsample_lerobot(cfg)
    if cfg.source.is_file():
        root, files = cfg.source.parent, [cfg.source]
    elif cfg.source.is_dir():
        root, files = cfg.source, sorted(p for p in cfg.source.rglob("*") if p.is_file())
    else:
        raise FileNotFoundError(f"no video file or folder at {cfg.source}")
    rejections: list[Rejection] = []
    videos: list[tuple[str, Path]] = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        if path.suffix.lower() in VIDEO_EXTENSIONS:
            videos.append((rel, path))
        elif path.suffix.lower() == SIDECAR_SUFFIX and any(
            path.with_suffix(ext).exists() or path.with_suffix(ext.upper()).exists()
            for ext in VIDEO_EXTENSIONS
        ):
            continue  # a video's per-frame arrays, read with the video
        else:
            rejections.append(
                Rejection("videos", rel, f"extension {path.suffix or '(none)'!r} is not a video extension")
            )
    partners: dict[str, Partner] = {}
    if cfg.target is not None:
        plan = pair_folders([rel for rel, _ in videos], cfg.target, VIDEO_EXTENSIONS, "video")
        rejections += plan.rejections
        partners = plan.partners
        videos = [(rel, path) for rel, path in videos if rel in partners]
    video_ids = make_keys([rel for rel, _ in videos])
    prepare_dataset_dir(cfg.dataset, cfg.overwrite)
    by_split: dict[str, list[tuple[str, Path]]] = {}
    for rel, path in videos:
        split = _split_of(rel, cfg)
        by_split.setdefault(split, []).append((rel, path))
    splits: dict[str, SplitInfo] = {}
    written: set[str] = set()
    for split, members in sorted(by_split.items()):
        with (
            SplitWriter(cfg.dataset / IMAGES_DIR, split, cfg.samples_per_shard) as writer,
            contextlib.ExitStack() as stack,
        ):
            target_writer = None
            if cfg.target is not None:
                target_dir = cfg.dataset / TARGET_IMAGES_DIR
                target_writer = stack.enter_context(SplitWriter(target_dir, split, cfg.samples_per_shard))
            for rel, path in members:
                partner = partners.get(rel)
                sides = Sides(
                    writer, None if partner is None or target_writer is None else (target_writer, partner)
                )
                rejection = _write_video(sides, rel, path, video_ids[rel], split, cfg, written)
                if rejection is not None:
                    rejections.append(rejection)
        if writer.shards:
            splits[split] = SplitInfo(tuple(ShardInfo(name, count) for name, count in writer.shards))
    pairing = (
        {} if cfg.target is None else pairing_record(cfg.target, None, sum(i.count for i in splits.values()))
    )
    return _finish(cfg, root, splits, rejections, pairing)


def _split_of(name: str, cfg: VideoConfig) -> str:
    return "val" if int(path_digest(name, 8), 16) / 16**8 < cfg.val_fraction else "train"


def _finish(
    cfg: VideoConfig,
    root: Path,
    splits: dict[str, SplitInfo],
    rejections: list[Rejection],
    pairing: dict[str, object] | None = None,
) -> dict[str, int]:
    """Write rejected.txt and the manifest; returns samples per split."""
    if not splits:
        raise ValueError(
            f"no decodable video frame under {cfg.source} ({len(rejections)} rejected, see rejected.txt)"
        )
    rejections.sort(key=lambda r: r.source)
    write_rejections(cfg.dataset, rejections)
    sampling = {"every_n": cfg.every_n, "fps": cfg.fps}
    save_manifest(
        cfg.dataset,
        Manifest(
            cfg.dataset.name,
            "videos",
            str(root.resolve()),
            cfg.size,
            cfg.quality,
            splits,
            (),
            len(rejections),
            sampling,
            pairing=pairing or {},
        ),
    )
    return {name: info.count for name, info in splits.items()}


@dataclass(frozen=True)
class Sides:
    """Where a video's frames go: the source writer, and for a paired video the target writer and file."""

    source: SplitWriter
    target: tuple[SplitWriter, Partner] | None = None


def count_frames(path: Path) -> tuple[int, tuple[int, int]]:
    """(decoded frames, (width, height)) of a video: what a pair must agree on before anything is written."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        return sum(1 for _ in container.decode(stream)), (stream.width, stream.height)


def pair_mismatch(rel: str, path: Path, partner: Partner) -> str | None:
    """Why a source video and its target cannot be paired frame for frame, or None."""
    try:
        (frames, (w, h)), (target_frames, (tw, th)) = count_frames(path), count_frames(partner.path)
    except (av.FFmpegError, OSError, ValueError) as exc:
        return f"pair {rel} / {partner.relpath}: unreadable ({type(exc).__name__}: {exc})"
    if frames != target_frames:
        return (
            f"pair {rel} ({frames} frames) / {partner.relpath} ({target_frames} frames): paired videos need "
            "the same frame count (frame t pairs frame t); trim one to the other"
        )
    if not same_aspect((w, h), (tw, th)):
        return (
            f"pair {rel} ({w}x{h}) / {partner.relpath} ({tw}x{th}): paired videos need the same aspect ratio"
        )
    return None


def _write_video(
    sides: Sides, rel: str, path: Path, video_id: str, split: str, cfg: VideoConfig, written: set[str]
) -> Rejection | None:
    """Append one video's kept frames (and its target's, paired); returns its rejection or None.

    A paired video's frames are held (encoded) until both sides have been read to the end, then each
    frame is added to both sides together: a target that ends early is a rejection with nothing of the
    pair written, and a decode error keeps the same frames on both sides.
    """
    try:
        fps = video_fps(path)
    except (av.FFmpegError, OSError, ValueError) as exc:
        return Rejection("videos", rel, f"unreadable video ({type(exc).__name__}: {exc})")
    if fps is None:
        return Rejection("videos", rel, "no video stream")
    partner = None if sides.target is None else sides.target[1]
    targets: Iterator[Frame] | None = None
    if partner is not None:
        mismatch = pair_mismatch(rel, path, partner)
        if mismatch is not None:
            return Rejection("pairs", rel, mismatch)
        targets = iter_frames(partner.path, FrameSelector(1, None), fps)
    sidecar = read_sidecar(path)
    selector = FrameSelector(cfg.every_n, cfg.fps)
    pending: list[tuple[str, dict[str, bytes], dict[str, bytes] | None]] = []  # key, source files, target's
    kept = 0
    reading = ""  # which side a decode error comes from: the source, or "its target ...: "
    try:
        for frame in iter_frames(path, selector, fps):
            key = f"{video_id}_f{frame.index:06d}"
            if key in written:
                raise ValueError(f"frame key {key!r} is produced twice; rename the video {rel!r}")
            written.add(key)
            meta: dict[str, object] = {
                "key": key,
                "source": rel,
                "split": split,
                "label": None,
                "video_id": video_id,
                "frame_index": frame.index,
                "timestamp": frame.timestamp,
                "fps": fps,
                "width": frame.image.width,
                "height": frame.image.height,
            }
            if sidecar is not None:
                meta["arrays"] = sidecar.frame(frame.index)
            target_files = None
            if targets is not None and partner is not None:
                reading = f"its target {partner.relpath}: "
                target = next((t for t in targets if t.index == frame.index), None)  # the same decoded frame
                reading = ""
                if target is None:
                    return Rejection(
                        "pairs",
                        rel,
                        f"pair {rel} / {partner.relpath}: the target ended before frame {frame.index} of the "
                        "source (it changed since its frames were counted?); nothing of the pair is written",
                    )
                side = {k: v for k, v in meta.items() if k != "arrays"} | {
                    "source": partner.relpath,
                    "pair_of": rel,
                    "width": target.image.width,
                    "height": target.image.height,
                }
                meta["target"] = partner.relpath
                target_files = _encode(target.image, side, cfg)
            pending.append((key, _encode(frame.image, meta, cfg), target_files))
            if targets is None:
                kept += _add_frames(sides, pending)
    except (av.FFmpegError, OSError) as exc:
        kept += _add_frames(sides, pending)  # the frames before the failure, on both sides of a pair
        if kept == 0:
            return Rejection("videos", rel, f"{reading}no decodable frame ({type(exc).__name__}: {exc})")
        return Rejection(
            "videos",
            rel,
            f"{reading}decoding failed after {kept} kept frames, which are kept ({type(exc).__name__}: {exc})",
        )
    kept += _add_frames(sides, pending)
    if kept == 0:
        return Rejection("videos", rel, "no decodable frame (zero frames in the video stream)")
    if sidecar is not None:
        sidecar.check_frame_count(selector.seen)
    return None


def _encode(image: Image.Image, meta: dict[str, object], cfg: VideoConfig) -> dict[str, bytes]:
    """A frame's shard members: its canonical view as JPEG and its metadata."""
    buffer = io.BytesIO()
    canonical_view(image, cfg.size).save(buffer, format="JPEG", quality=cfg.quality)
    return {"jpg": buffer.getvalue(), "json": json.dumps(meta).encode()}


def _add_frames(sides: Sides, pending: list[tuple[str, dict[str, bytes], dict[str, bytes] | None]]) -> int:
    """Add the encoded frames to the source side and, paired, the target side together; returns how many."""
    for key, source, target in pending:
        if sides.target is not None and target is not None:
            sides.target[0].add(key, target)
        sides.source.add(key, source)
    count, pending[:] = len(pending), []
    return count


def _subsample_lerobot(cfg: VideoConfig) -> dict[str, int]:
    """A LeRobot dataset folder -> frames: one video id per episode of camera ``cfg.camera``."""
    if not is_lerobot(cfg.source):
        raise ValueError(f"--camera reads a LeRobot dataset folder, and {cfg.source} has no meta/info.json")
    if cfg.camera is None:
        raise ValueError(f"{cfg.source} is a LeRobot dataset: choose a camera with --camera")
    fps = float(read_info(cfg.source)["fps"])
    episodes = list(lerobot_episodes(cfg.source, cfg.camera))
    prepare_dataset_dir(cfg.dataset, cfg.overwrite)
    rejections: list[Rejection] = []
    splits: dict[str, SplitInfo] = {}
    by_split: dict[str, list[LeRobotEpisode]] = {}
    for episode in episodes:
        by_split.setdefault(_split_of(f"episode_{episode.index:06d}", cfg), []).append(episode)
    for split, members in sorted(by_split.items()):
        with SplitWriter(cfg.dataset / IMAGES_DIR, split, cfg.samples_per_shard) as writer:
            for episode in members:
                rejection = _write_episode(writer, episode, split, fps, cfg)
                if rejection is not None:
                    rejections.append(rejection)
        if writer.shards:
            splits[split] = SplitInfo(tuple(ShardInfo(name, count) for name, count in writer.shards))
    return _finish(cfg, cfg.source, splits, rejections)


def _write_episode(
    writer: SplitWriter, episode: LeRobotEpisode, split: str, fps: float, cfg: VideoConfig
) -> Rejection | None:
    """Append one episode's kept frames, or return why it is skipped (nothing written then)."""
    video_id = f"episode_{episode.index:06d}"
    rel = episode.video.relative_to(cfg.source).as_posix()
    try:
        images = match_frames(episode, fps)
    except (EpisodeMismatch, av.FFmpegError, OSError) as exc:
        return Rejection("videos", f"{rel} episode {episode.index}", f"skipped: {exc}")
    selector = FrameSelector(cfg.every_n, cfg.fps)
    for row, image in enumerate(images):
        index, timestamp = int(episode.frame_indices[row]), float(episode.timestamps[row])
        if not selector.keep(index, timestamp):
            continue
        meta: dict[str, object] = {
            "key": f"{video_id}_f{index:06d}",
            "source": rel,
            "split": split,
            "label": None,
            "video_id": video_id,
            "episode_index": episode.index,
            "frame_index": index,
            "timestamp": timestamp,
            "fps": fps,
            "width": image.width,
            "height": image.height,
            "arrays": {name: values[row].tolist() for name, values in episode.arrays.items()},
        }
        writer.add(str(meta["key"]), _encode(image, meta, cfg))
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "source",
        type=Path,
        help="a video file, a folder of videos, or a LeRobot dataset folder (with --camera)",
    )
    parser.add_argument("dataset", type=Path, help="output dataset folder, <root>/<dataset>")
    keep = parser.add_mutually_exclusive_group(required=True)
    keep.add_argument("--every-n", type=int, help="keep every Nth decoded frame")
    keep.add_argument("--fps", type=float, help="keep this many frames per second")
    parser.add_argument("--size", type=int, default=224, help="canonical view side in pixels (default 224)")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument(
        "--val-fraction", type=float, default=0.0, help="share of videos (by path hash) for val"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing dataset (and its features)"
    )
    parser.add_argument(
        "--target",
        type=Path,
        default=None,
        help="paired videos: folder of target videos matched by relative path (extension aside), same frame "
        "counts; their frames go to target_images/ under the source frames' keys (docs/alignment.md)",
    )
    parser.add_argument(
        "--camera",
        default=None,
        help="LeRobot dataset folders: the camera (video key) to read, one video per episode",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    counts = subsample_videos(config_from_args(VideoConfig, args))
    print(json.dumps({"dataset": str(args.dataset), "counts": counts}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
