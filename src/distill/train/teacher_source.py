"""A teacher as the trainer's source encoder (``adapter.encoder=teacher``): DINOv2 aligned to the frozen DINOv2.

The student path aligns a trained student; this one aligns a copy of the run's teacher itself (its
architecture and weights, as ``load_teacher`` builds them) so that its features on the source images
match the frozen teacher's stored features of the target images. The trainer sees it as it sees a
student: ``forward`` gives a :class:`StudentOutput` whose one feature set is the teacher's own, in the
stats-normalised space the targets and the loss live in, so the loader, losses, validation, LoRA adapter
and checkpoints are the student path's. Saved as a local weights folder (:func:`~distill.teachers.export.write_teacher`) plus the
stats it was aligned in (``stats/``), which ``load_teacher(name, "hub", weights=folder)`` ignores.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from distill.features import TeacherSpec
from distill.geometry import check_image_batch
from distill.io import atomic_folder
from distill.models.checkpoint import STATS_DIR
from distill.models.student import StudentOutput
from distill.stats import FeatureStats
from distill.teachers import Teacher
from distill.teachers.export import write_teacher


@dataclass(frozen=True)
class TeacherEncoderConfig:
    """What validation and the reach probe read of an encoder (a student's config has the same fields)."""

    teachers: dict[str, TeacherSpec]  # the one teacher it predicts: itself
    image_size: int  # the canonical view the loader serves
    pixel_head: bool = False


class TeacherEncoder(nn.Module):
    """A trainable copy of a teacher whose output is its own features, normalised with the run's stats."""

    def __init__(self, teacher: Teacher, image_size: int) -> None:
        super().__init__()
        self.teacher = teacher
        self.name = teacher.spec.name
        self.config = TeacherEncoderConfig({self.name: teacher.spec}, image_size)
        self.pixel_head = None  # the trainer's hooks for a student's pixel head and quantiser
        self.quantizer = None
        self.stats: dict[str, FeatureStats] = {}

    @property
    def device(self) -> torch.device:
        return self.teacher.device

    def set_stats(self, stats: Mapping[str, FeatureStats]) -> None:
        """The stats the targets are normalised with; exactly this teacher's, matching its spec."""
        self.stats = check_teacher_stats(self.config, stats, "the run's stats")

    def forward(self, images: torch.Tensor) -> StudentOutput:
        """uint8 or [0, 1] images -> the teacher's features (with gradients), normalised; z is its CLS."""
        check_image_batch(images, f"images for the {self.name!r} source encoder")
        if self.name not in self.stats:
            raise RuntimeError(f"the {self.name!r} source encoder has no stats: call set_stats first")
        raw = self.teacher.encode(self.teacher.preprocess(images))
        features = self.stats[self.name].normalize(raw)
        z = raw.cls if raw.cls is not None else raw.patch.mean(dim=(1, 2))
        return StudentOutput(z=z, features={self.name: features}, pixels=None)

    def save_pretrained(self, folder: Path, stats: Mapping[str, FeatureStats]) -> None:
        """The teacher's local weights folder, with the stats it was aligned in under ``stats/``."""
        checked = check_teacher_stats(self.config, stats, f"stats for {folder}")
        with atomic_folder(folder) as staging:
            write_teacher(self.teacher, staging)
            (staging / STATS_DIR).mkdir()
            checked[self.name].save(staging / STATS_DIR / f"{self.name}.safetensors")


def check_teacher_stats(
    config: TeacherEncoderConfig, stats: Mapping[str, FeatureStats], source: str
) -> dict[str, FeatureStats]:
    """Exactly the encoder's teacher, computed for its spec."""
    if set(stats) != set(config.teachers):
        raise ValueError(
            f"{source}: expected stats for exactly {sorted(config.teachers)}, got {sorted(stats)}"
        )
    for name, spec in config.teachers.items():
        stats[name].check_matches(spec, source=f"{source} for {name!r}")
    return dict(stats)


def read_teacher_stats(folder: Path, config: TeacherEncoderConfig) -> dict[str, FeatureStats]:
    """The stats a saved teacher encoder was aligned in (``folder/stats/<name>.safetensors``)."""
    stats = {name: FeatureStats.load(folder / STATS_DIR / f"{name}.safetensors") for name in config.teachers}
    return check_teacher_stats(config, stats, str(folder / STATS_DIR))
