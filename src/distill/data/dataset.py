"""An opened dataset split with the teachers a consumer asked for: checked, and able to decode.

Opening checks, before any sample is read: the manifest, that each teacher's features are
complete for the split, and that each teacher's stats file matches the stored features (channel
counts, teacher name). Decoding a joined sample checks the blob's own key and shapes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distill.data.codec import StoredFeatures, parse_sample
from distill.data.join import JoinedSample
from distill.data.jpeg import decode_view
from distill.data.manifest import Manifest, ShardInfo, TeacherRecord, load_manifest
from distill.features import TeacherOutput, TeacherSpec
from distill.stats import FeatureStats


@dataclass
class Batch:
    """What the trainer gets: keys, canonical views and stats-normalised float32 targets."""

    keys: list[str]
    images: torch.Tensor  # uint8 [B, 3, S, S]
    targets: dict[str, TeacherOutput]  # teacher -> patch [B, h, w, C], cls [B, C] | None

    def __len__(self) -> int:
        return len(self.keys)

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True)."""
        targets = {
            name: TeacherOutput(out.patch.pin_memory(), None if out.cls is None else out.cls.pin_memory())
            for name, out in self.targets.items()
        }
        return Batch(self.keys, self.images.pin_memory(), targets)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        targets = {
            name: TeacherOutput(
                out.patch.to(device, non_blocking=non_blocking),
                None if out.cls is None else out.cls.to(device, non_blocking=non_blocking),
            )
            for name, out in self.targets.items()
        }
        return Batch(self.keys, self.images.to(device, non_blocking=non_blocking), targets)


def concat_batches(parts: Sequence[Batch]) -> Batch:
    if len(parts) == 1:
        return parts[0]
    targets = {}
    for name, first in parts[0].targets.items():
        cls = None if first.cls is None else torch.cat([p.targets[name].cls for p in parts])  # type: ignore[misc]
        targets[name] = TeacherOutput(torch.cat([p.targets[name].patch for p in parts]), cls)
    return Batch([k for p in parts for k in p.keys], torch.cat([p.images for p in parts]), targets)


@dataclass
class PackedTargets:
    """One teacher's targets for a batch, still in the storage dtype (a quarter of float32 for int8).

    :meth:`finish` dequantises and normalises in one fused pass, on whatever device the tensors
    are on: the loader ships these from its workers and finishes them on the training device.
    """

    patch: torch.Tensor  # [B, h, w, C] storage dtype
    scale: torch.Tensor | None  # [B, C] float32, int8 storage only
    cls: torch.Tensor | None  # [B, C_cls] float16 / bfloat16

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedTargets:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return PackedTargets(
            self.patch.to(device, non_blocking=non_blocking), move(self.scale), move(self.cls)
        )

    def pin_memory(self) -> PackedTargets:
        def pin(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.pin_memory()

        return PackedTargets(self.patch.pin_memory(), pin(self.scale), pin(self.cls))

    def finish(self, stats: FeatureStats | None) -> TeacherOutput:
        """float32 ``(q * scale - mean) / std`` computed as ``q * (scale / std) + (-mean / std)``."""
        x = self.patch.float()
        factor = None if self.scale is None else self.scale[:, None, None, :]
        if stats is not None:
            inv = 1.0 / stats.patch_std.to(x)
            bias = -stats.patch_mean.to(x) * inv
            patch = torch.addcmul(bias, x, inv if factor is None else factor * inv)
        else:
            patch = x if factor is None else x.mul_(factor)
        cls = None
        if self.cls is not None:
            cls = self.cls.float()
            if stats is not None:
                assert stats.cls_mean is not None and stats.cls_std is not None
                cls = (cls - stats.cls_mean.to(cls)) / stats.cls_std.to(cls)
        return TeacherOutput(patch, cls)


@dataclass
class PackedBatch:
    keys: list[str]
    images: torch.Tensor
    targets: dict[str, PackedTargets]

    def pin_memory(self) -> PackedBatch:
        return PackedBatch(
            self.keys, self.images.pin_memory(), {n: t.pin_memory() for n, t in self.targets.items()}
        )

    def finish(self, stats: dict[str, FeatureStats], device: torch.device | str | None = None) -> Batch:
        """Move to ``device`` (when given) and dequantise + normalise there."""
        if device is None:
            return Batch(self.keys, self.images, {n: t.finish(stats.get(n)) for n, t in self.targets.items()})
        targets = {n: t.to(device, non_blocking=True).finish(stats.get(n)) for n, t in self.targets.items()}
        return Batch(self.keys, self.images.to(device, non_blocking=True), targets)


@dataclass
class DecodedSample:
    key: str
    image: torch.Tensor  # uint8 [3, S, S]
    features: dict[str, StoredFeatures]
    meta: dict[str, Any]


def check_stored(stored: StoredFeatures, key: str, teacher: str, record: TeacherRecord, where: str) -> None:
    """A parsed blob against its tar member's key and the manifest record: key, teacher, storage, shapes."""
    if stored.key != key or stored.teacher != teacher:
        raise ValueError(
            f"{where}: blob says key {stored.key!r} of teacher {stored.teacher!r}; re-extract {teacher!r}"
        )
    if stored.storage != record.storage:
        raise ValueError(
            f"{where}: stored as {stored.storage}, the manifest says {record.storage}; re-extract {teacher!r}"
        )
    spec = record.target_spec
    if tuple(stored.patch.shape) != (*spec.grid, spec.channels):
        raise ValueError(
            f"{where}: patch {tuple(stored.patch.shape)} but the manifest says {(*spec.grid, spec.channels)}"
        )
    cls_shape = None if stored.cls is None else tuple(stored.cls.shape)
    if cls_shape != (None if spec.cls_channels is None else (spec.cls_channels,)):
        raise ValueError(f"{where}: cls {cls_shape} but the manifest says {spec.cls_channels}")


def stats_path(stats_dir: Path, teacher: str) -> Path:
    return Path(stats_dir) / f"{teacher}.safetensors"


def load_checked_stats(stats_dir: Path, teacher: str, spec: TeacherSpec) -> FeatureStats:
    """``<stats_dir>/<teacher>.safetensors``, refused (naming the file) when it does not fit ``spec``."""
    path = stats_path(stats_dir, teacher)
    stats = FeatureStats.load(path)
    if stats.teacher != teacher:
        raise ValueError(
            f"{path}: stats were computed for teacher {stats.teacher!r}, not {teacher!r}; recompute them"
        )
    stats.check_matches(spec, source=str(path))
    return stats


@dataclass
class DatasetView:
    path: Path
    manifest: Manifest
    split: str
    records: dict[str, TeacherRecord]
    stats: dict[str, FeatureStats]  # empty when not normalising

    @property
    def teachers(self) -> list[str]:
        return list(self.records)

    @property
    def shards(self) -> tuple[ShardInfo, ...]:
        return self.manifest.split(self.split, self.path).shards

    def decode(self, sample: JoinedSample) -> DecodedSample:
        where = f"{self.path}/{sample.shard} key {sample.key!r}"
        image = decode_view(sample.jpeg, self.manifest.canonical_size, where)
        features = {}
        for name, record in self.records.items():
            spot = f"{self.path}/{name}/{sample.shard} key {sample.key!r}"
            stored = parse_sample(sample.features[name], spot)
            check_stored(stored, sample.key, name, record, spot)
            features[name] = stored
        try:
            meta = json.loads(sample.meta)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{where}: metadata is not JSON ({exc}); rebuild the image shard") from exc
        return DecodedSample(sample.key, image, features, meta)

    def pack(self, samples: Sequence[DecodedSample]) -> PackedBatch:
        """Stack samples, keeping features in their storage dtype."""
        targets = {}
        for name, record in self.records.items():
            rows = [s.features[name] for s in samples]
            scale = torch.stack([r.scale for r in rows]) if record.storage == "int8" else None  # type: ignore[misc]
            cls = torch.stack([r.cls for r in rows]) if record.spec.cls_channels is not None else None  # type: ignore[misc]
            targets[name] = PackedTargets(torch.stack([r.patch for r in rows]), scale, cls)
        return PackedBatch([s.key for s in samples], torch.stack([s.image for s in samples]), targets)

    def collate(self, samples: Sequence[DecodedSample]) -> Batch:
        """Stack samples, dequantise and normalise each teacher's features with its stats (on CPU)."""
        return self.pack(samples).finish(self.stats)


def open_view(
    dataset: Path | str,
    split: str,
    teachers: Sequence[str],
    stats_dir: Path | str | None,
    normalize: bool = True,
) -> DatasetView:
    """Check and open ``split`` of ``dataset`` for ``teachers``; stats are required when normalising."""
    path = Path(dataset)
    manifest = load_manifest(path)
    manifest.split(split, path)
    if len(set(teachers)) != len(teachers):
        raise ValueError(f"teachers listed twice: {list(teachers)}")
    records = {name: manifest.teacher(name, split, path / "manifest.json") for name in teachers}
    stats: dict[str, FeatureStats] = {}
    if normalize and teachers:
        if stats_dir is None:
            raise ValueError(
                "normalising targets needs stats_dir (feature_stats/ from calc_feature_stats.py), or normalize=False"
            )
        stats = {
            name: load_checked_stats(Path(stats_dir), name, record.target_spec)
            for name, record in records.items()
        }
    return DatasetView(path, manifest, split, records, stats)
