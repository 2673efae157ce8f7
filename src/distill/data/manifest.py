"""``manifest.json``: what a dataset holds (splits, shards with counts, canonical size, teachers).

The manifest is the only index readers trust: shard lists and per-shard sample counts come
from it (the loader skips whole shards by these counts when resuming), and a teacher's
features are used only for the splits listed as complete. It is written atomically;
read-modify-write updates go through :func:`update_manifest`, which holds a file lock so two
extraction jobs for different teachers cannot lose each other's entry.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from distill.data.codec import StorageDtype, check_storage
from distill.features import UNRECORDED_PRECISION, FeaturePrecision, TeacherSpec, check_feature_precision
from distill.io import atomic_write_text

MANIFEST_NAME = "manifest.json"
FORMAT = "distill-dataset"
VERSION = 1
IMAGES_DIR = "images"
TARGET_IMAGES_DIR = "target_images"  # a paired dataset's target side: what the teachers see, same keys
STATS_DIR = "feature_stats"  # <dataset>/feature_stats/<teacher>.safetensors: the default stats location


@dataclass(frozen=True)
class ShardInfo:
    name: str  # "<split>-000000.tar", the same in images/ and every teacher folder
    count: int  # samples in the shard


@dataclass(frozen=True)
class SplitInfo:
    shards: tuple[ShardInfo, ...]

    @property
    def count(self) -> int:
        return sum(shard.count for shard in self.shards)


@dataclass(frozen=True)
class TeacherRecord:
    """How one teacher's feature shards were made."""

    spec: TeacherSpec  # the teacher as built (its own grid)
    storage: StorageDtype
    stored_grid: tuple[int, int]  # grid in the shards (smaller than spec.grid when area-downsampled)
    source: str  # "tiny" or "hub"
    weights: str | None
    precision: FeaturePrecision  # what the teacher ran in (distill.teachers.precision, "auto" resolved)
    complete_splits: tuple[str, ...] = ()
    outlier_tokens: int = 0  # int8 only: highest-norm tokens per sample kept in float16 (codec)

    def __post_init__(self) -> None:
        if self.outlier_tokens < 0 or (self.outlier_tokens and self.storage != "int8"):
            raise ValueError(
                f"teacher {self.spec.name!r}: outlier_tokens={self.outlier_tokens} needs int8 storage and K >= 0"
            )

    @property
    def storage_label(self) -> str:
        """How the features are stored, as stats provenance records it."""
        if self.outlier_tokens:
            return f"{self.storage}+{self.outlier_tokens} fp16 outlier tokens"
        return self.storage

    @property
    def target_spec(self) -> TeacherSpec:
        """The spec of the features as stored and served by the loader (grid = stored grid)."""
        return replace(self.spec, grid=self.stored_grid)

    def same_features(self, other: TeacherRecord) -> bool:
        """True when both records describe identically produced features (completion aside)."""
        return replace(self, complete_splits=()) == replace(other, complete_splits=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(),
            "storage": self.storage,
            "stored_grid": list(self.stored_grid),
            "source": self.source,
            "weights": self.weights,
            "precision": self.precision,
            "complete_splits": list(self.complete_splits),
        } | ({"outlier_tokens": self.outlier_tokens} if self.outlier_tokens else {})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TeacherRecord:
        return cls(
            spec=TeacherSpec.from_dict(data["spec"]),
            storage=check_storage(str(data["storage"])),
            stored_grid=(int(data["stored_grid"][0]), int(data["stored_grid"][1])),
            source=str(data["source"]),
            weights=None if data["weights"] is None else str(data["weights"]),
            # manifests written before the precision was recorded: fp32 (distill.features says why)
            precision=check_feature_precision(
                str(data.get("precision", UNRECORDED_PRECISION)), f"teacher {data['spec']['name']!r}"
            ),
            complete_splits=tuple(str(s) for s in data["complete_splits"]),
            outlier_tokens=int(data.get("outlier_tokens", 0)),
        )


@dataclass(frozen=True)
class Manifest:
    name: str
    kind: str  # "images" or "videos"
    source: str  # the input folder it was built from
    canonical_size: int
    jpeg_quality: int
    splits: dict[str, SplitInfo]
    classes: tuple[str, ...] = ()
    rejected: int = 0
    sampling: dict[str, Any] = field(default_factory=dict)  # how video frames were kept
    teachers: dict[str, TeacherRecord] = field(default_factory=dict)
    # paired datasets (organize --target / --pairs): how the two sides were matched; {} otherwise
    pairing: dict[str, Any] = field(default_factory=dict)

    @property
    def teacher_images(self) -> str:
        """The image folder teachers are extracted from: the target side of a paired dataset."""
        return TARGET_IMAGES_DIR if self.pairing else IMAGES_DIR

    def fingerprint(self) -> str:
        """The dataset's identity for stats provenance: name, kind, view, and every shard with its count.

        Teachers are left out (extracting another teacher does not change the images); so is the
        source folder (the same images organised on another machine are the same dataset).
        """
        identity = {
            "name": self.name,
            "kind": self.kind,
            "canonical_size": self.canonical_size,
            "jpeg_quality": self.jpeg_quality,
            "splits": {
                name: [[shard.name, shard.count] for shard in info.shards]
                for name, info in sorted(self.splits.items())
            },
        } | ({"pairing": self.pairing} if self.pairing else {})
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]

    def split(self, name: str, path: Path | str = MANIFEST_NAME) -> SplitInfo:
        if name not in self.splits:
            raise KeyError(f"{path}: no split {name!r}; the dataset has {sorted(self.splits)}")
        return self.splits[name]

    def teacher(self, name: str, split: str, path: Path | str = MANIFEST_NAME) -> TeacherRecord:
        """The record of a teacher whose features are complete for ``split``, or a clear error."""
        if name not in self.teachers:
            raise KeyError(
                f"{path}: no features for teacher {name!r} (have {sorted(self.teachers)}); "
                "run scripts/preprocessing/feature_extraction.py for it"
            )
        record = self.teachers[name]
        if split not in record.complete_splits:
            raise ValueError(
                f"{path}: features of teacher {name!r} are not complete for split {split!r} "
                f"(complete: {list(record.complete_splits)}); rerun feature_extraction.py, it resumes"
            )
        return record

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "kind": self.kind,
            "source": self.source,
            "canonical_size": self.canonical_size,
            "image_ext": "jpg",
            "jpeg_quality": self.jpeg_quality,
            "classes": list(self.classes),
            "rejected": self.rejected,
            "sampling": self.sampling,
            "splits": {
                name: {
                    "count": info.count,
                    "shards": [{"name": s.name, "count": s.count} for s in info.shards],
                }
                for name, info in self.splits.items()
            },
            "teachers": {name: record.to_dict() for name, record in self.teachers.items()},
        } | ({"pairing": self.pairing} if self.pairing else {})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ValueError(
                f"not a {FORMAT} v{VERSION} manifest (format={data.get('format')!r}, version={data.get('version')!r})"
            )
        splits = {
            name: SplitInfo(tuple(ShardInfo(str(s["name"]), int(s["count"])) for s in info["shards"]))
            for name, info in data["splits"].items()
        }
        for name, info in data["splits"].items():
            if int(info["count"]) != splits[name].count:
                raise ValueError(
                    f"split {name!r}: count {info['count']} differs from the sum of its shard counts {splits[name].count}"
                )
        return cls(
            name=str(data["name"]),
            kind=str(data["kind"]),
            source=str(data["source"]),
            canonical_size=int(data["canonical_size"]),
            jpeg_quality=int(data["jpeg_quality"]),
            splits=splits,
            classes=tuple(str(c) for c in data["classes"]),
            rejected=int(data["rejected"]),
            sampling=dict(data.get("sampling", {})),
            teachers={name: TeacherRecord.from_dict(rec) for name, rec in data["teachers"].items()},
            pairing=dict(data.get("pairing", {})),
        )


def default_stats_dir(dataset: Path | str) -> Path:
    """Where stats of a dataset's stored features live unless told otherwise: ``<dataset>/feature_stats``."""
    return Path(dataset) / STATS_DIR


def manifest_path(dataset: Path | str) -> Path:
    return Path(dataset) / MANIFEST_NAME


def load_manifest(dataset: Path | str) -> Manifest:
    """Read ``<dataset>/manifest.json`` with errors that name the file and the fix."""
    path = manifest_path(dataset)
    if not path.is_file():
        raise FileNotFoundError(
            f"no {MANIFEST_NAME} in {dataset}: not a dataset, or organize did not finish; "
            "build it with scripts/preprocessing/organize_webdataset.py (or subsample_videos.py)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Manifest.from_dict(data)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"{path} is unreadable ({type(exc).__name__}: {exc}); rebuild the dataset with organize"
        ) from exc


def save_manifest(dataset: Path | str, manifest: Manifest) -> None:
    atomic_write_text(manifest_path(dataset), json.dumps(manifest.to_dict(), indent=2) + "\n")


@contextmanager
def manifest_lock(dataset: Path | str) -> Iterator[None]:
    """An exclusive advisory lock over read-modify-write of one dataset's manifest."""
    lock = Path(dataset) / ".manifest.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def update_manifest(dataset: Path | str, change: Callable[[Manifest], Manifest]) -> Manifest:
    """Load, apply ``change``, save atomically, all under the manifest lock."""
    with manifest_lock(dataset):
        updated = change(load_manifest(dataset))
        save_manifest(dataset, updated)
    return updated
