"""What every teacher is: a declared geometry, a typed output, and a frozen forward pass."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from distill.geometry import check_image_batch, resize_and_normalize


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


class Teacher(nn.Module, ABC):
    """A frozen teacher. Subclasses implement :meth:`encode` on normalised model input.

    ``forward`` takes canonical-view images (uint8 [0, 255] or float [0, 1], ``[B, 3, H, W]``),
    resamples them to the teacher's resolution, normalises with its mean/std and runs the model
    under ``inference_mode``.
    """

    spec: TeacherSpec

    def __init__(self, spec: TeacherSpec) -> None:
        super().__init__()
        self.spec = spec

    @abstractmethod
    def encode(self, pixel_values: torch.Tensor) -> TeacherOutput:
        """Normalised input [B, 3, S, S] -> features. Implemented by each teacher family."""

    def freeze(self) -> Teacher:
        self.eval()
        for param in self.parameters():
            param.requires_grad_(False)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return resize_and_normalize(
            images.to(self.device), self.spec.input_size, self.spec.mean, self.spec.std
        )

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> TeacherOutput:
        check_image_batch(images, f"images for teacher {self.spec.name!r}")
        out = self.encode(self.preprocess(images))
        self._check_output(out, images.shape[0])
        return out

    def _check_output(self, out: TeacherOutput, batch: int) -> None:
        expected = (batch, *self.spec.grid, self.spec.channels)
        if tuple(out.patch.shape) != expected:
            raise RuntimeError(
                f"teacher {self.spec.name!r} produced patch {tuple(out.patch.shape)}, spec says {expected}"
            )
        if (out.cls is None) != (self.spec.cls_channels is None):
            raise RuntimeError(f"teacher {self.spec.name!r}: cls presence disagrees with its spec")
