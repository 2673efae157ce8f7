"""What every teacher is: a frozen forward pass producing its declared features (:mod:`distill.features`)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from distill.features import TeacherOutput, TeacherSpec
from distill.geometry import check_image_batch, resize_and_normalize


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
