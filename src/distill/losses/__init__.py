"""Distillation losses on stats-normalised teacher features, plus the pixel loss."""

from distill.losses.cosine import cosine_distance
from distill.losses.distillation import LossBreakdown, LossConfig, distillation_loss
from distill.losses.patch import PatchTerms, patch_terms
from distill.losses.pixel import pixel_mse

__all__ = [
    "LossBreakdown",
    "LossConfig",
    "PatchTerms",
    "cosine_distance",
    "distillation_loss",
    "patch_terms",
    "pixel_mse",
]
