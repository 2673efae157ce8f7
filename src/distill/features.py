"""What a teacher's features are: their geometry (``TeacherSpec``) and a batch of them (``TeacherOutput``).

Shared by the teachers, the dataset format, the stats, the student and the decoders, so it sits in
the lowest layer and imports no distill package.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import torch

# The precision a teacher computed features in ("auto" resolved on its device), as the manifest and
# stats provenance record it; features computed in one are not mixed with, or normalised by stats of,
# features computed in the other.
FeaturePrecision = Literal["bf16", "fp32"]
FEATURE_PRECISIONS: tuple[str, ...] = get_args(FeaturePrecision)
# What a manifest or stats file without the field means: it was written before the precision was
# recorded, and until bf16 autocast became the GPU default (distill.teachers.precision) teachers ran
# in plain fp32. (Extractions on GPU between that change and the field ran bf16 unrecorded, so they
# read as fp32 too; re-extract those with --overwrite.)
UNRECORDED_PRECISION: FeaturePrecision = "fp32"


def check_feature_precision(value: str, where: str) -> FeaturePrecision:
    if value not in FEATURE_PRECISIONS:
        raise ValueError(f"{where}: precision must be one of {', '.join(FEATURE_PRECISIONS)}, got {value!r}")
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class TeacherSpec:
    """Geometry and output shape of one built teacher (tiny and real versions differ)."""

    name: str  # registry name, also the feature key in shards ("dinov2", "sam", ...)
    input_size: int  # square resolution the model consumes
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    grid: tuple[int, int]  # (h, w) of the patch output
    channels: int  # C of the patch output
    cls_channels: int | None  # C of the summary vector; None when the teacher has none

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TeacherSpec:
        return cls(
            name=str(data["name"]),
            input_size=int(data["input_size"]),
            mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
            grid=(int(data["grid"][0]), int(data["grid"][1])),
            channels=int(data["channels"]),
            cls_channels=None if data["cls_channels"] is None else int(data["cls_channels"]),
        )


@dataclass
class TeacherOutput:
    """Features of a batch: ``patch`` [B, h, w, C] and ``cls`` [B, C] (or None)."""

    patch: torch.Tensor
    cls: torch.Tensor | None

    def to(self, device: torch.device | str) -> TeacherOutput:
        return TeacherOutput(self.patch.to(device), None if self.cls is None else self.cls.to(device))
