"""Read an image shard and its teachers' feature shards in lockstep, joined by key.

Each tar is streamed once, side by side; sample ``i`` of every tar must carry the same key,
and every tar must end at the same sample. Any difference is a :class:`ShardError` naming both
shards and both keys: no positional zipping of streams that could have drifted apart.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from distill.data.manifest import IMAGES_DIR
from distill.data.shards import BufferSample, ShardError, ShardSample, iter_shard_buffers, iter_shard_counted

B = TypeVar("B", bound=bytes | memoryview)


@dataclass
class JoinedSample:
    key: str
    ordinal: int
    shard: str  # shard file name, e.g. "train-000003.tar"
    jpeg: bytes
    meta: bytes
    features: dict[str, bytes | memoryview]  # teacher -> safetensors blob (a view of the shard when writable)


def shard_paths(dataset: Path, shard: str, teachers: Sequence[str]) -> tuple[Path, dict[str, Path]]:
    return dataset / IMAGES_DIR / shard, {name: dataset / name / shard for name in teachers}


def _member(files: Mapping[str, B], key: str, ext: str, path: Path) -> B:
    if ext not in files:
        raise ShardError(
            f"{path}: key {key!r} has no .{ext} member (has {sorted(files)}); rebuild this shard",
            path,
            key,
        )
    return files[ext]


def iter_joined(
    dataset: Path,
    shard: str,
    teachers: Sequence[str],
    want: Sequence[bool] | np.ndarray | None = None,
    expected: int | None = None,
    writable: bool = False,
) -> Iterator[JoinedSample]:
    """Samples of one shard with every teacher's features; ``want[i]`` False skips sample i unread.

    ``expected`` (the manifest's count) makes a shard of another length an error. ``writable``:
    feature blobs come as writable views of the mapped shards, which :func:`distill.data.codec.parse_sample` parses without copying.
    """

    def select(ordinal: int, key: str) -> bool:
        return want is None or (ordinal < len(want) and bool(want[ordinal]))

    image_path, teacher_paths = shard_paths(dataset, shard, teachers)
    totals: dict[str, list[int]] = {name: [] for name in ["", *teachers]}
    images = iter_shard_counted(image_path, select, totals[""])
    read = iter_shard_buffers if writable else iter_shard_counted
    features: dict[str, Iterator[ShardSample | BufferSample]] = {
        name: read(path, select, totals[name]) for name, path in teacher_paths.items()
    }
    for sample in images:
        blobs: dict[str, bytes | memoryview] = {}
        for name, stream in features.items():
            other = next(stream, None)
            if other is None:
                raise ShardError(
                    f"{teacher_paths[name]} ends before sample {sample.ordinal} (key {sample.key!r} in {image_path}); "
                    f"re-extract teacher {name!r} (feature_extraction.py redoes incomplete shards)",
                    teacher_paths[name],
                    sample.key,
                )
            if other.key != sample.key or other.ordinal != sample.ordinal:
                raise ShardError(
                    f"key mismatch: {image_path} has {sample.key!r} at sample {sample.ordinal} but "
                    f"{teacher_paths[name]} has {other.key!r} at sample {other.ordinal}; re-extract teacher {name!r}",
                    teacher_paths[name],
                    sample.key,
                )
            files: Mapping[str, bytes | memoryview] = other.files
            blobs[name] = _member(files, other.key, f"{name}.safetensors", teacher_paths[name])
        yield JoinedSample(
            sample.key,
            sample.ordinal,
            shard,
            _member(sample.files, sample.key, "jpg", image_path),
            sample.files.get("json", b"{}"),
            blobs,
        )
    for name, stream in features.items():
        extra = next(stream, None)
        if extra is not None:
            raise ShardError(
                f"{teacher_paths[name]} has key {extra.key!r} after the last sample of {image_path}; re-extract teacher {name!r}",
                teacher_paths[name],
                extra.key,
            )
    count = totals[""][0]
    if expected is not None and count != expected:
        raise ShardError(
            f"{image_path} has {count} samples but the manifest says {expected}; rebuild the dataset with organize",
            image_path,
        )
    for name in teachers:
        if totals[name][0] != count:
            raise ShardError(
                f"{teacher_paths[name]} has {totals[name][0]} samples but {image_path} has {count}; re-extract teacher {name!r}",
                teacher_paths[name],
            )
