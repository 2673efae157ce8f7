"""Sample keys: stable, unique names built from an input's relative path.

A key names one sample in every shard (image and each teacher), so it must survive
webdataset's "key = file name up to the first dot" rule: only ``[A-Za-z0-9_-]``, no dots,
no slashes. Path separators become ``__``; other characters become ``_``. When two inputs
collapse to the same safe form (``a b.jpg`` and ``a_b.jpg``, or ``x.jpg`` and ``x.png``)
each of them gets ``-`` plus 10 hex digits of the SHA-1 of its relative path.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import PurePosixPath

KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def path_digest(relpath: str, digits: int = 10) -> str:
    """Hex digest of a relative path: the tie-breaker for keys and the split hash."""
    return hashlib.sha1(relpath.encode("utf-8")).hexdigest()[:digits]


def safe_stem(relpath: str) -> str:
    """``class a/img 1.JPEG`` -> ``class_a__img_1``: the readable part of a key."""
    path = PurePosixPath(relpath)
    parts = [*path.parent.parts, path.stem] if str(path.parent) != "." else [path.stem]
    cleaned = [_UNSAFE.sub("_", part).strip("_") or "_" for part in parts]
    return "__".join(cleaned)


def make_keys(relpaths: Sequence[str]) -> dict[str, str]:
    """Relative POSIX paths -> unique keys (deterministic for a given set of inputs)."""
    if len(set(relpaths)) != len(relpaths):
        duplicates = sorted(p for p, n in Counter(relpaths).items() if n > 1)
        raise ValueError(f"the same input path is listed twice: {duplicates[:3]}")
    stems = {path: safe_stem(path) for path in relpaths}
    counts = Counter(stems.values())
    keys = {
        path: stem if counts[stem] == 1 else f"{stem}-{path_digest(path)}" for path, stem in stems.items()
    }
    clashes = [key for key, n in Counter(keys.values()).items() if n > 1]
    if clashes:
        raise ValueError(f"could not derive unique keys (clash on {clashes[:3]}); rename the inputs")
    return keys


def check_key(key: str, where: str) -> str:
    """Return ``key`` or fail naming the file: shards with unsafe keys cannot be joined reliably."""
    if not KEY_PATTERN.match(key):
        raise ValueError(
            f"{where}: key {key!r} has characters outside [A-Za-z0-9_-]; rebuild the shards with organize"
        )
    return key
