"""Per-channel feature statistics: the normalisation the student is trained in.

Stored as ``<dataset>/feature_stats/<teacher>.safetensors`` with tensors ``patch_mean``,
``patch_std`` (and ``cls_mean``, ``cls_std`` when the teacher has a CLS); the metadata holds the
teacher, the sample count and a :class:`StatsProvenance`: which teacher weights produced the
features, in which precision the teacher ran, how they were stored (dtype, grid) and which dataset
they came from. Whoever applies stats compares that record with what it is about to normalise and
refuses a mismatch, naming every field that differs. Accumulation is streaming and mergeable
(Chan et al.'s parallel variance), so ranks can each accumulate their shards and merge exactly.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from distill.distributed import DistContext, all_gather
from distill.features import (
    UNRECORDED_PRECISION,
    FeaturePrecision,
    TeacherOutput,
    TeacherSpec,
    check_feature_precision,
)
from distill.tensorfile import UnreadableFileError
from distill.tensorfile import load as load_tensors
from distill.tensorfile import save as save_tensors

STD_FLOOR = 1e-6  # a constant channel is normalised by this instead of dividing by zero


LIVE_STORAGE = "float32 (live)"  # the storage of an online teacher's features: never quantised or pooled
STATS_FIX = (
    "recompute them for this data (distill-stats DATASET writes DATASET/feature_stats/), or point "
    "dataset.stats_dir / --stats-dir at stats computed for it"
)


@dataclass(frozen=True)
class StatsProvenance:
    """Where a stats file's numbers came from; compared field by field before the stats are applied."""

    teacher: str  # registry name
    source: str  # tiny | hub (| synthetic in benchmarks)
    weights: str | None  # hub id, local dir or checkpoint file; None for tiny teachers
    storage: str  # how the features were stored when measured: fp16, bf16, int8[...], or LIVE_STORAGE
    precision: FeaturePrecision  # what the teacher ran in when it computed them (bf16 | fp32)
    grid: tuple[int, int]  # the patch grid measured (the stored grid, smaller when area-downsampled)
    dataset: str  # the dataset's name (manifest name)
    dataset_fingerprint: str  # its identity: name, source, canonical size and every shard with its count
    split: str  # the split measured

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "grid": list(self.grid)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StatsProvenance:
        # stats written before the precision was recorded: fp32 (distill.features says why)
        data = {"precision": UNRECORDED_PRECISION} | json.loads(text)
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            raise ValueError(f"provenance fields {sorted(data)}, expected {sorted(names)}")
        precision = check_feature_precision(str(data["precision"]), "provenance")
        return cls(**{**data, "grid": (int(data["grid"][0]), int(data["grid"][1])), "precision": precision})

    def differences(self, expected: StatsProvenance, ignore: tuple[str, ...] = ()) -> list[str]:
        """``"storage: stats int8, here fp16"`` for every field (not in ``ignore``) that differs."""
        out = []
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(expected, f.name)
            if f.name not in ignore and mine != theirs:
                out.append(f"{f.name}: stats {_show(mine)}, here {_show(theirs)}")
        return out

    def describe(self) -> str:
        weights = f" {self.weights}" if self.weights else ""
        grid = "x".join(map(str, self.grid))
        split = f"/{self.split}" if self.split else ""
        return (
            f"{self.teacher} ({self.source}{weights}, {self.precision}) stored as {self.storage} at {grid} over "
            f"{self.dataset}{split} [dataset fingerprint {self.dataset_fingerprint}]"
        )


def _show(value: object) -> str:
    return "x".join(map(str, value)) if isinstance(value, tuple) else repr(value)


@dataclass
class FeatureStats:
    """Mean and standard deviation per channel, for patch tokens and (separately) CLS."""

    teacher: str
    patch_mean: torch.Tensor  # [C]
    patch_std: torch.Tensor  # [C]
    cls_mean: torch.Tensor | None  # [C_cls]
    cls_std: torch.Tensor | None
    count: int  # samples the statistics were computed over
    provenance: StatsProvenance | None = None  # None only in files written before it was recorded

    def check_provenance(
        self,
        expected: StatsProvenance,
        source: str = "stats",
        ignore: tuple[str, ...] = (),
        fix: str = STATS_FIX,
    ) -> None:
        """Refuse stats measured on other features than ``expected`` describes (fields in ``ignore`` aside)."""
        if self.provenance is None:
            raise ValueError(
                f"{source}: these stats record no provenance (written by an older distill), so nothing says "
                f"they belong to {expected.describe()}; {fix}"
            )
        differ = self.provenance.differences(expected, ignore)
        if differ:
            raise ValueError(
                f"{source}: stats were measured on other features than these ({'; '.join(differ)}); {fix}"
            )

    def check_matches(self, spec: TeacherSpec, source: str = "stats") -> None:
        """Fail with the file and the fix when these stats were computed for another teacher shape."""
        if self.patch_mean.shape != (spec.channels,):
            raise ValueError(
                f"{source}: patch stats have {tuple(self.patch_mean.shape)} channels but teacher "
                f"{spec.name!r} has {spec.channels}; recompute them with calc_feature_stats.py"
            )
        cls_shape = None if self.cls_mean is None else tuple(self.cls_mean.shape)
        expected = None if spec.cls_channels is None else (spec.cls_channels,)
        if cls_shape != expected:
            raise ValueError(
                f"{source}: cls stats shape {cls_shape} does not match teacher {spec.name!r} ({expected}); "
                "recompute them with calc_feature_stats.py"
            )

    def normalize(self, out: TeacherOutput) -> TeacherOutput:
        patch = (out.patch - self.patch_mean.to(out.patch)) / self.patch_std.to(out.patch)
        cls = None
        if out.cls is not None:
            assert self.cls_mean is not None and self.cls_std is not None
            cls = (out.cls - self.cls_mean.to(out.cls)) / self.cls_std.to(out.cls)
        return TeacherOutput(patch, cls)

    def denormalize(self, out: TeacherOutput) -> TeacherOutput:
        patch = out.patch * self.patch_std.to(out.patch) + self.patch_mean.to(out.patch)
        cls = None
        if out.cls is not None:
            assert self.cls_mean is not None and self.cls_std is not None
            cls = out.cls * self.cls_std.to(out.cls) + self.cls_mean.to(out.cls)
        return TeacherOutput(patch, cls)

    def tensors(self) -> dict[str, torch.Tensor]:
        named = {"patch_mean": self.patch_mean, "patch_std": self.patch_std}
        if self.cls_mean is not None and self.cls_std is not None:
            named |= {"cls_mean": self.cls_mean, "cls_std": self.cls_std}
        return {k: v.float().contiguous() for k, v in named.items()}

    def metadata(self) -> dict[str, str]:
        meta = {"teacher": self.teacher, "count": str(self.count)}
        if self.provenance is not None:
            meta["provenance"] = self.provenance.to_json()
        return meta

    def save(self, path: str | Path) -> None:
        """Write atomically; the bytes depend only on the numbers and the metadata."""
        save_tensors(path, self.tensors(), self.metadata())

    @classmethod
    def from_tensors(
        cls,
        teacher: str,
        tensors: dict[str, torch.Tensor],
        count: int,
        provenance: StatsProvenance | None = None,
    ) -> FeatureStats:
        return cls(
            teacher=teacher,
            patch_mean=tensors["patch_mean"],
            patch_std=tensors["patch_std"],
            cls_mean=tensors.get("cls_mean"),
            cls_std=tensors.get("cls_std"),
            count=count,
            provenance=provenance,
        )

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        path = Path(path)
        fix = "compute them again with distill-stats (scripts/preprocessing/calc_feature_stats.py)"
        tensors, metadata = load_tensors(path, "feature stats file", fix)
        if "teacher" not in metadata or "count" not in metadata or "patch_mean" not in tensors:
            raise UnreadableFileError(
                f"{path} is not a distill stats file (metadata lacks 'teacher'/'count'); {fix}"
            )
        provenance = None
        if "provenance" in metadata:
            try:
                provenance = StatsProvenance.from_json(metadata["provenance"])
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                raise UnreadableFileError(f"{path}: unreadable provenance record ({exc}); {fix}") from exc
        return cls.from_tensors(metadata["teacher"], tensors, int(metadata["count"]), provenance)

    def with_provenance(self, provenance: StatsProvenance | None) -> FeatureStats:
        return replace(self, provenance=provenance)


@dataclass
class _Moments:
    count: int = 0
    mean: torch.Tensor | None = None  # float64 [C]
    m2: torch.Tensor | None = None  # float64 [C], sum of squared deviations

    def add(self, rows: torch.Tensor) -> None:
        """Merge a block of rows [N, C] (Chan et al. parallel update, in float64)."""
        rows = rows.detach().to(torch.float64).reshape(-1, rows.shape[-1])
        n = rows.shape[0]
        if n == 0:
            return
        block_mean = rows.mean(0)
        block_m2 = ((rows - block_mean) ** 2).sum(0)
        self.merge(_Moments(n, block_mean, block_m2))

    def merge(self, other: _Moments) -> None:
        if other.count == 0:
            return
        if self.count == 0 or self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = other.count, other.mean, other.m2
            return
        assert other.mean is not None and other.m2 is not None
        total = self.count + other.count
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.count / total)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / total)
        self.count = total

    def std(self) -> torch.Tensor:
        assert self.m2 is not None
        return (self.m2 / max(self.count, 1)).sqrt().clamp_min(STD_FLOOR)


@dataclass
class StatsAccumulator:
    """Streaming per-channel moments of one teacher's features; mergeable across ranks."""

    teacher: str
    samples: int = 0
    patch: _Moments = field(default_factory=_Moments)
    cls: _Moments = field(default_factory=_Moments)

    def add(self, out: TeacherOutput) -> None:
        self.samples += out.patch.shape[0]
        self.patch.add(out.patch)
        if out.cls is not None:
            self.cls.add(out.cls)

    def merge(self, other: StatsAccumulator) -> None:
        self.samples += other.samples
        self.patch.merge(other.patch)
        self.cls.merge(other.cls)

    def finish(self, provenance: StatsProvenance | None = None) -> FeatureStats:
        if self.patch.count == 0:
            raise ValueError(f"no features were accumulated for teacher {self.teacher!r}")
        assert self.patch.mean is not None
        has_cls = self.cls.count > 0 and self.cls.mean is not None
        return FeatureStats(
            teacher=self.teacher,
            patch_mean=self.patch.mean.float(),
            patch_std=self.patch.std().float(),
            cls_mean=self.cls.mean.float() if has_cls and self.cls.mean is not None else None,
            cls_std=self.cls.std().float() if has_cls else None,
            count=self.samples,
            provenance=provenance,
        )


def pack_state(acc: StatsAccumulator, channels: int, cls_channels: int | None) -> torch.Tensor:
    """The accumulator as one float64 CPU vector of a length every rank knows (for all_gather).

    Layout: ``[samples, patch_count, patch_mean (C), patch_m2 (C), cls_count, cls_mean (Cc), cls_m2 (Cc)]``;
    empty moments are zeros with count 0.
    """
    parts = [torch.tensor([float(acc.samples)], dtype=torch.float64)]
    for moments, width in ((acc.patch, channels), (acc.cls, cls_channels or 0)):
        zeros = torch.zeros(width, dtype=torch.float64)
        mean = zeros if moments.mean is None else moments.mean.to("cpu", torch.float64)
        m2 = zeros if moments.m2 is None else moments.m2.to("cpu", torch.float64)
        if mean.shape != (width,):
            raise ValueError(
                f"teacher {acc.teacher!r}: accumulated {tuple(mean.shape)} channels, expected {width}"
            )
        parts += [
            torch.tensor([float(moments.count)], dtype=torch.float64),
            mean,
            m2,
        ]
    return torch.cat(parts)


def unpack_state(
    teacher: str, packed: torch.Tensor, channels: int, cls_channels: int | None
) -> StatsAccumulator:
    """Inverse of :func:`pack_state`."""
    width = cls_channels or 0
    expected = 3 + 2 * channels + 2 * width
    if packed.shape != (expected,):
        raise ValueError(
            f"packed stats of {tuple(packed.shape)} do not fit {channels} + {width} channels ({expected} values)"
        )
    acc = StatsAccumulator(teacher, samples=int(packed[0].item()))
    offset = 1
    for name, size in (("patch", channels), ("cls", width)):
        count = int(packed[offset].item())
        mean, m2 = packed[offset + 1 : offset + 1 + size], packed[offset + 1 + size : offset + 1 + 2 * size]
        if count:
            setattr(acc, name, _Moments(count, mean.clone(), m2.clone()))
        offset += 1 + 2 * size
    return acc


def merge_across_ranks(
    ctx: DistContext, acc: StatsAccumulator, channels: int, cls_channels: int | None
) -> StatsAccumulator:
    """Every rank's accumulator merged in rank order (the same total on every rank)."""
    total = StatsAccumulator(acc.teacher)
    for packed in all_gather(ctx, pack_state(acc, channels, cls_channels)):
        total.merge(unpack_state(acc.teacher, packed, channels, cls_channels))
    return total
