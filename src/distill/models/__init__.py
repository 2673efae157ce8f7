"""The student: ViT backbone, CLS bottleneck, token decoder, per-teacher heads and pixel head."""

from distill.models.checkpoint import (
    check_stats,
    load_state_strict,
    read_config,
    read_stats,
    write_checkpoint,
)
from distill.models.config import StudentConfig
from distill.models.decoder import TokenDecoder, ZProjection
from distill.models.heads import SpatialHead, SummaryHead, TeacherHead, resample_grid
from distill.models.pixel_head import PixelHead, patchify
from distill.models.presets import PRESETS, BackboneSize, StudentPreset
from distill.models.student import Student, StudentOutput

__all__ = [
    "PRESETS",
    "BackboneSize",
    "PixelHead",
    "SpatialHead",
    "Student",
    "StudentConfig",
    "StudentOutput",
    "StudentPreset",
    "SummaryHead",
    "TeacherHead",
    "TokenDecoder",
    "ZProjection",
    "check_stats",
    "load_state_strict",
    "patchify",
    "read_config",
    "read_stats",
    "resample_grid",
    "write_checkpoint",
]
