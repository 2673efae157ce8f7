"""An opened dataset split with the teachers a consumer asked for: checked, and able to decode.

Opening checks, before any sample is read: the manifest, that each teacher's features are
complete for the split, and that each teacher's stats file matches the stored features (teacher
name, channel counts, and its provenance: teacher weights, precision, storage dtype, stored grid and
the dataset it was measured on). Decoding a joined sample checks the blob's own key and shapes.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.data.codec import StoredFeatures, parse_sample
from distill.data.join import JoinedSample
from distill.data.jpeg import decode_view_hwc
from distill.data.manifest import Manifest, ShardInfo, TeacherRecord, default_stats_dir, load_manifest
from distill.features import TeacherOutput
from distill.stats import FeatureStats, StatsProvenance


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

    :func:`finish_targets` dequantises and normalises them, on whatever device the tensors are on:
    the loader ships these from its workers and finishes them on the training device.
    """

    patch: torch.Tensor  # [B, h, w, C] storage dtype
    scale: torch.Tensor | None  # [B, C] float32, int8 storage only
    cls: torch.Tensor | None  # [B, C_cls] float16 / bfloat16
    outlier_index: torch.Tensor | None = None  # [B, K] int64 raster indices (int8 with outlier tokens)
    outlier_patch: torch.Tensor | None = None  # [B, K, C] float16

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedTargets:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return PackedTargets(
            self.patch.to(device, non_blocking=non_blocking),
            move(self.scale),
            move(self.cls),
            move(self.outlier_index),
            move(self.outlier_patch),
        )

    def pin_memory(self) -> PackedTargets:
        def pin(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.pin_memory()

        return PackedTargets(
            self.patch.pin_memory(),
            pin(self.scale),
            pin(self.cls),
            pin(self.outlier_index),
            pin(self.outlier_patch),
        )


def finish_targets(parts: Sequence[PackedTargets], norm: Normalization | None, out: TeacherOutput) -> None:
    """float32 ``(q * scale - mean) / std`` of one teacher's parts, in order, into ``out`` (a batch's
    tensors on the parts' device): the stored values converted into ``out`` as they are joined
    (``torch.cat`` with ``out=``), then ``x * (scale / std) + (-mean / std)`` in place, one pass each
    for the whole batch. (One pass reading the stored dtype would move fewer bytes on a GPU, but a CPU
    runs mixed-dtype kernels unvectorised: 2.6 ms against 1.1 for a part of four SAM grids.)"""
    rows = sum(len(part.patch) for part in parts)
    if out.patch.shape != (rows, *parts[0].patch.shape[1:]):
        raise ValueError(
            f"finish_targets: out has shape {tuple(out.patch.shape)} for {rows} rows of the parts"
        )
    patch = torch.cat([part.patch for part in parts], out=out.patch)
    scale = _joined([part.scale for part in parts], "scale")
    factor = None if scale is None else scale[:, None, None, :]
    if norm is not None:
        multiplier = norm.patch_scale if factor is None else factor * norm.patch_scale
        torch.addcmul(norm.patch_shift, patch, multiplier, out=patch)
    elif factor is not None:
        patch.mul_(factor)
    index = _joined([part.outlier_index for part in parts], "outlier_index")
    outliers = _joined([part.outlier_patch for part in parts], "outlier_patch")
    if index is not None and outliers is not None:
        values = outliers.float()
        if norm is not None:
            values = torch.addcmul(norm.patch_shift, values, norm.patch_scale)
        flat = out.patch.view(out.patch.shape[0], -1, out.patch.shape[-1])
        flat.scatter_(1, index[:, :, None].expand(-1, -1, flat.shape[-1]), values)
    stored = _joined([part.cls for part in parts], "cls")
    if stored is None or out.cls is None:
        return
    cls = out.cls.copy_(stored)
    if norm is None:
        return
    if norm.cls_scale is None or norm.cls_shift is None:
        raise ValueError("these features have a CLS but their stats have no CLS statistics")
    torch.addcmul(norm.cls_shift, cls, norm.cls_scale, out=cls)


def _joined(tensors: Sequence[torch.Tensor | None], what: str) -> torch.Tensor | None:
    """The parts' small tensors (scales, outlier tokens, CLS) as one (None: not stored)."""
    present = [t for t in tensors if t is not None]
    if not present:
        return None
    if len(present) != len(tensors):
        raise ValueError(f"batch parts disagree: {what} is stored in {len(present)} of {len(tensors)} parts")
    return present[0] if len(present) == 1 else torch.cat(present)


@dataclass(frozen=True)
class Normalization:
    """One teacher's stats as the affine map finishing applies, ``x * scale + shift``, on one device
    (made once per batch: each stats tensor copied to a GPU per part would stall on the copy)."""

    patch_scale: torch.Tensor  # [C] 1 / std
    patch_shift: torch.Tensor  # [C] -mean / std
    cls_scale: torch.Tensor | None
    cls_shift: torch.Tensor | None

    @classmethod
    def of(cls, stats: FeatureStats, device: torch.device) -> Normalization:
        def affine(mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            scale = 1.0 / std.to(device, torch.float32)
            return scale, -mean.to(device, torch.float32) * scale

        patch_scale, patch_shift = affine(stats.patch_mean, stats.patch_std)
        if stats.cls_mean is None or stats.cls_std is None:
            return cls(patch_scale, patch_shift, None, None)
        return cls(patch_scale, patch_shift, *affine(stats.cls_mean, stats.cls_std))


def finish_parts(
    parts: Sequence[PackedBatch], stats: Mapping[str, FeatureStats], device: torch.device | str
) -> Batch:
    """The parts (a batch's per-stream shares) as one batch on ``device``, dequantised and normalised.

    Every tensor is new (none is a view of a part's buffer, which a loader slot reuses). Each teacher's
    parts are joined and finished for the whole batch at once (:func:`finish_targets`): a few operations
    called per teacher, where finishing part by part called ~400 per batch of 16 parts, each a few
    microseconds of the interpreter lock on the thread that runs beside the training step (the
    conversion inside ``torch.cat`` still copies part by part on a GPU, but from C++).
    """
    if not parts:
        raise ValueError("finish_parts: no parts to finish")
    device, first = torch.device(device), parts[0]
    for part in parts:
        _check_same_layout(first, part)
    moved = [part.to(device, non_blocking=True) for part in parts]
    size = sum(len(part.keys) for part in parts)
    images = torch.cat([part.images for part in moved], out=_batch_tensor(first.images, size, device))
    targets = {}
    for name, packed in first.targets.items():
        out = TeacherOutput(
            _batch_tensor(packed.patch, size, device, torch.float32),
            None if packed.cls is None else _batch_tensor(packed.cls, size, device, torch.float32),
        )
        norm = Normalization.of(stats[name], device) if name in stats else None
        finish_targets([part.targets[name] for part in moved], norm, out)
        targets[name] = out
    return Batch([key for part in parts for key in part.keys], images, targets)


def _batch_tensor(
    part: torch.Tensor, size: int, device: torch.device, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """An empty tensor for ``size`` rows shaped like ``part``'s."""
    return torch.empty((size, *part.shape[1:]), dtype=dtype or part.dtype, device=device)


def _check_same_layout(first: PackedBatch, part: PackedBatch) -> None:
    """Parts of one batch must agree on every tensor's shape but the sample count, which must be their
    key count (else rows would misalign, or an ``out=`` slice be resized with only a warning). Dtypes
    may differ (a blob may hold a float32 CLS where others hold float16): finishing promotes each."""
    rows = {len(t) for t in part.tensors() if t is not None}
    if rows == {len(part.keys)} and _row_shapes(part) == _row_shapes(first):
        return
    raise ValueError(
        f"batch parts disagree: keys {part.keys[:2]}... ({len(part.keys)} keys, tensors of {sorted(rows)} rows) "
        f"have {_row_shapes(part)}, keys {first.keys[:2]}... have {_row_shapes(first)}"
    )


def _row_shapes(batch: PackedBatch) -> list[tuple[str, tuple[int, ...] | None]]:
    """Each tensor's shape after the sample dimension (None: not stored), named."""
    named: list[tuple[str, torch.Tensor | None]] = [("images", batch.images)]
    for name, packed in batch.targets.items():
        named += [
            (f"{name}.patch", packed.patch),
            (f"{name}.scale", packed.scale),
            (f"{name}.cls", packed.cls),
            (f"{name}.outlier_index", packed.outlier_index),
            (f"{name}.outlier_patch", packed.outlier_patch),
        ]
    return [(label, None if t is None else tuple(t.shape[1:])) for label, t in named]


PACK_ALIGN = 64  # byte alignment of each tensor in a packed batch's buffer
Allocator = Callable[[int], torch.Tensor]  # nbytes -> a 1-D uint8 tensor of at least that many bytes


@dataclass(frozen=True)
class TensorPlace:
    """Where one contiguous tensor lies in a buffer: byte offset, dtype and shape."""

    offset: int
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def view(self, buffer: torch.Tensor) -> torch.Tensor:
        """The tensor over ``buffer`` (1-D uint8; offset 0 = its first byte), without a copy."""
        return buffer[self.offset : self.offset + self.nbytes].view(self.dtype).view(self.shape)


@dataclass(frozen=True)
class PackedLayout:
    """A packed batch without its tensors: keys and where each tensor lies in its buffer.

    What a loader worker sends when the buffer is shared memory the main process already holds.
    """

    keys: list[str]
    teachers: list[str]
    # images, then per teacher: patch, scale, cls, outlier index, outlier rows (None: not stored)
    places: list[TensorPlace | None]

    @property
    def end(self) -> int:
        """The byte after the last of its tensors: the part of the buffer the batch uses."""
        return max(place.offset + place.nbytes for place in self.places if place is not None)

    def open(self, buffer: torch.Tensor) -> PackedBatch:
        """The batch over ``buffer`` (the same bytes the layout was taken from), without a copy."""
        return PackedBatch.of(
            self.keys, self.teachers, [None if p is None else p.view(buffer) for p in self.places]
        )


@dataclass
class PackedBatch:
    keys: list[str]
    images: torch.Tensor
    targets: dict[str, PackedTargets]

    @classmethod
    def of(
        cls, keys: list[str], teachers: Sequence[str], tensors: Sequence[torch.Tensor | None]
    ) -> PackedBatch:
        """From the flat list :meth:`DatasetView.pack` fills: images, then 5 per teacher (see PackedLayout)."""
        images = tensors[0]
        if images is None or len(tensors) != 1 + 5 * len(teachers):
            raise ValueError(f"{len(tensors)} packed tensors do not fit {len(teachers)} teachers")
        targets = {}
        for i, name in enumerate(teachers):
            patch, scale, cls_, index, outliers = tensors[1 + 5 * i : 6 + 5 * i]
            if patch is None:
                raise ValueError(f"packed batch without {name!r} patch features")
            targets[name] = PackedTargets(patch, scale, cls_, index, outliers)
        return cls(keys, images, targets)

    def tensors(self) -> list[torch.Tensor | None]:
        """The flat list :meth:`of` takes."""
        out: list[torch.Tensor | None] = [self.images]
        for t in self.targets.values():
            out += [t.patch, t.scale, t.cls, t.outlier_index, t.outlier_patch]
        return out

    def layout(self, buffer: torch.Tensor) -> PackedLayout:
        """Where this batch's tensors lie in ``buffer`` (1-D uint8); each must be a contiguous view of it."""
        base, size = buffer.data_ptr(), buffer.numel()
        places: list[TensorPlace | None] = []
        for t in self.tensors():
            if t is None:
                places.append(None)
                continue
            place = TensorPlace(t.data_ptr() - base, t.dtype, tuple(t.shape))
            if not t.is_contiguous() or place.offset < 0 or place.offset + place.nbytes > size:
                raise ValueError("a packed tensor is not a contiguous view of the buffer")
            places.append(place)
        return PackedLayout(self.keys, list(self.targets), places)

    def pin_memory(self) -> PackedBatch:
        return PackedBatch(
            self.keys, self.images.pin_memory(), {n: t.pin_memory() for n, t in self.targets.items()}
        )

    def to(self, device: torch.device, non_blocking: bool = False) -> PackedBatch:
        return PackedBatch(
            self.keys,
            self.images.to(device, non_blocking=non_blocking),
            {n: t.to(device, non_blocking=non_blocking) for n, t in self.targets.items()},
        )

    def finish(self, stats: Mapping[str, FeatureStats], device: torch.device | str | None = None) -> Batch:
        """Dequantised and normalised on ``device`` (default: where it lies), in new tensors."""
        return finish_parts([self], stats, self.images.device if device is None else device)


def _stack_into(rows: list[torch.Tensor], out: torch.Tensor) -> None:
    """``torch.stack(rows, out=out)``; uint8 rows (the images: ``[3, S, S]`` views of channels-last
    decodes) are copied by numpy, whose strided copy transposes them ~3x faster than torch's
    (0.05 against 0.15 ms per 224 px image here)."""
    if out.dtype != torch.uint8 or any(r.dtype != torch.uint8 or r.shape != out.shape[1:] for r in rows):
        torch.stack(rows, out=out)
        return
    target = out.numpy()
    for i, row in enumerate(rows):
        np.copyto(target[i], row.numpy())


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
    if stored.storage != record.storage or stored.outlier_tokens != record.outlier_tokens:
        got = stored.storage + (f"+{stored.outlier_tokens} outlier tokens" if stored.outlier_tokens else "")
        raise ValueError(
            f"{where}: stored as {got}, the manifest says {record.storage_label}; re-extract {teacher!r}"
        )
    spec = record.spec  # its grid as stored is record.stored_grid (record.target_spec, without building it)
    if tuple(stored.patch.shape) != (*record.stored_grid, spec.channels):
        raise ValueError(
            f"{where}: patch {tuple(stored.patch.shape)} but the manifest says {(*record.stored_grid, spec.channels)}"
        )
    cls_shape = None if stored.cls is None else tuple(stored.cls.shape)
    if cls_shape != (None if spec.cls_channels is None else (spec.cls_channels,)):
        raise ValueError(f"{where}: cls {cls_shape} but the manifest says {spec.cls_channels}")


def stats_path(stats_dir: Path, teacher: str) -> Path:
    return Path(stats_dir) / f"{teacher}.safetensors"


def stored_provenance(manifest: Manifest, teacher: str, record: TeacherRecord, split: str) -> StatsProvenance:
    """What stats of ``teacher``'s stored features in this dataset record (and must record to be used)."""
    return StatsProvenance(
        teacher=teacher,
        source=record.source,
        weights=record.weights,
        storage=record.storage_label,
        precision=record.precision,
        grid=record.stored_grid,
        dataset=manifest.name,
        dataset_fingerprint=manifest.fingerprint(),
        split=split,
    )


def stats_fix(dataset: Path | str) -> str:
    return (
        f"recompute them: distill-stats {dataset} (writes {default_stats_dir(dataset)}/), or point "
        "dataset.stats_dir / --stats-dir at stats computed on this dataset's features"
    )


def check_teacher_stats(
    stats: FeatureStats, teacher: str, record: TeacherRecord, manifest: Manifest, dataset: Path, source: str
) -> FeatureStats:
    """Stats refused (naming ``source``) unless they were measured on exactly these stored features.

    The split they were measured on may differ (validation is normalised with the train stats).
    """
    if stats.teacher != teacher:
        raise ValueError(
            f"{source}: stats were computed for teacher {stats.teacher!r}, not {teacher!r}; recompute them"
        )
    stats.check_matches(record.target_spec, source=source)
    expected = stored_provenance(manifest, teacher, record, split="")
    stats.check_provenance(expected, source=source, ignore=("split",), fix=stats_fix(dataset))
    return stats


def load_checked_stats(
    stats_dir: Path, teacher: str, record: TeacherRecord, manifest: Manifest, dataset: Path
) -> FeatureStats:
    """``<stats_dir>/<teacher>.safetensors``, refused (naming the file and what differs) unless it
    describes ``teacher``'s stored features in ``dataset``."""
    path = stats_path(stats_dir, teacher)
    return check_teacher_stats(FeatureStats.load(path), teacher, record, manifest, dataset, str(path))


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
        # channels-last as decoded, seen as [3, S, S]: pack copies it into the batch in one pass
        image = decode_view_hwc(sample.jpeg, self.manifest.canonical_size, where).permute(2, 0, 1)
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

    def pack(self, samples: Sequence[DecodedSample], allocate: Allocator | None = None) -> PackedBatch:
        """Stack samples, keeping features in their storage dtype.

        Every tensor of the batch is a view of one buffer, ``allocate(nbytes)`` (a 1-D uint8
        tensor of at least ``nbytes``; default: fresh memory), filled by one copy per tensor.
        """
        fields: list[list[torch.Tensor] | None] = [[s.image for s in samples]]
        for name, record in self.records.items():
            stored = [s.features[name] for s in samples]
            fields.append([r.patch for r in stored])
            fields.append([r.scale for r in stored] if record.storage == "int8" else None)  # type: ignore[misc]
            fields.append([r.cls for r in stored] if record.spec.cls_channels is not None else None)  # type: ignore[misc]
            outliers = bool(record.outlier_tokens)
            fields.append([r.outlier_index for r in stored] if outliers else None)  # type: ignore[misc]
            fields.append([r.outlier_patch for r in stored] if outliers else None)  # type: ignore[misc]
        places: list[TensorPlace | None] = []
        end = 0
        for rows in fields:
            if rows is None:
                places.append(None)
                continue
            dtype = functools.reduce(torch.promote_types, (r.dtype for r in rows))  # as torch.stack
            place = TensorPlace(end, dtype, (len(rows), *rows[0].shape))
            places.append(place)
            end = -(-(place.offset + place.nbytes) // PACK_ALIGN) * PACK_ALIGN
        buffer = allocate(end) if allocate is not None else torch.empty(end, dtype=torch.uint8)
        tensors = [None if p is None else p.view(buffer) for p in places]
        for rows, out in zip(fields, tensors, strict=True):
            if rows is not None and out is not None:
                _stack_into(rows, out)
        return PackedBatch.of([s.key for s in samples], list(self.records), tensors)

    def collate(self, samples: Sequence[DecodedSample]) -> Batch:
        """Stack samples, dequantise and normalise each teacher's features with its stats (on CPU)."""
        return self.pack(samples).finish(self.stats)


def open_view(
    dataset: Path | str,
    split: str,
    teachers: Sequence[str],
    stats_dir: Path | str | None,
    normalize: bool = True,
    stats: Mapping[str, FeatureStats] | None = None,
) -> DatasetView:
    """Check and open ``split`` of ``dataset`` for ``teachers``; stats are required when normalising.

    They are read from ``stats_dir`` (None: ``<dataset>/feature_stats``) and must describe this
    dataset's stored features, unless ``stats`` gives them: then they are used as given (only
    their shapes are checked), e.g. a finetune's targets normalised with the init student's stats.
    """
    path = Path(dataset)
    manifest = load_manifest(path)
    manifest.split(split, path)
    if len(set(teachers)) != len(teachers):
        raise ValueError(f"teachers listed twice: {list(teachers)}")
    records = {name: manifest.teacher(name, split, path / "manifest.json") for name in teachers}
    chosen: dict[str, FeatureStats] = {}
    if normalize and teachers:
        if stats is not None:
            missing = sorted(set(teachers) - set(stats))
            if missing:
                raise ValueError(f"no stats given for teacher(s) {missing}")
            for name, record in records.items():
                stats[name].check_matches(record.target_spec, source=f"the stats given for {name!r}")
            chosen = {name: stats[name] for name in teachers}
        else:
            folder = Path(stats_dir) if stats_dir is not None else default_stats_dir(path)
            chosen = {
                name: load_checked_stats(folder, name, record, manifest, path)
                for name, record in records.items()
            }
    return DatasetView(path, manifest, split, records, chosen)
