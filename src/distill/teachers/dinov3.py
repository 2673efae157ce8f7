"""Teacher family ``dinov3`` (transformers ``DINOv3ViTModel``): patch tokens without registers, and CLS.

Targets: the final-layernorm tokens (``last_hidden_state``); CLS is token 0, the register tokens
(4 in the released ViTs) follow it and are dropped, the patch tokens come after them in raster order.
DINOv3 uses RoPE, so any multiple of the patch size works; the input size is the checkpoint's
image processor size (224 for the released ViTs: a 14x14 grid at patch 16), else ``config.image_size``.
Its features decode to PCA maps, like DINOv2's.

Tiny: width 32, 2 layers, patch 8 at 56 px (a 7x7 x 32 grid) with 2 register tokens.
"""

from __future__ import annotations

from typing import Any

from transformers import DINOv3ViTConfig, DINOv3ViTModel

from distill.features import TeacherSpec
from distill.teachers._hf import (
    load_pretrained,
    read_preprocessor,
    seeded,
)
from distill.teachers.dinov2 import Dinov2Teacher, dino_spec
from distill.teachers.registry import TeacherEntry, register_teacher

NAME = "dinov3"
DEFAULT_WEIGHTS = "facebook/dinov3-vitl16-pretrain-lvd1689m"


def tiny_config() -> DINOv3ViTConfig:
    """The tiny teacher's config (a fresh object each call: models keep a reference to theirs)."""
    return DINOv3ViTConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=56,
        patch_size=8,
        num_register_tokens=2,
    )


def dinov3_spec(config: Any, preprocessor: dict[str, Any]) -> TeacherSpec:
    return dino_spec(NAME, config, preprocessor)


class Dinov3Teacher(Dinov2Teacher):
    """DINOv3 ViT: DINOv2's targets (final-layernorm patch tokens after CLS and the registers, CLS token)."""


def build_tiny() -> Dinov3Teacher:
    """Seeded random-init DINOv3ViTModel miniature (same class as the real teacher)."""
    with seeded(0):
        model = DINOv3ViTModel(tiny_config()).eval()
    return Dinov3Teacher(model, dinov3_spec(model.config, {}))


def load_weights(weights: str) -> Dinov3Teacher:
    """A hub id or local directory holding a ``dinov3_vit`` checkpoint."""
    model = load_pretrained(NAME, weights, {"dinov3_vit": DINOv3ViTModel})
    return Dinov3Teacher(model, dinov3_spec(model.config, read_preprocessor(weights)))


register_teacher(TeacherEntry(NAME, DEFAULT_WEIGHTS, build_tiny, load_weights, decoder="pca"))
