"""Teacher family ``dinov2``: transformers DINOv2 (default ``facebook/dinov2-large``).

Targets: DINOv2's last hidden state, after its final layernorm: the patch tokens ``[B, h, w, C]`` and the
CLS token ``[B, C]`` (``C = hidden_size``, 1024 for ViT-L). Checkpoints with register tokens
(``model_type = dinov2_with_registers``, e.g. ``facebook/dinov2-with-registers-large``) load into
``Dinov2WithRegistersModel``; their ``config.num_register_tokens`` tokens sit between the CLS token and the
patches and are dropped. The register count comes from the config, never from the sequence length.

Geometry: the input size is the crop size of the checkpoint's own image processor (224 for the official
checkpoints, whose ``config.image_size`` of 518 is the pretraining resolution; DINOv2 interpolates its
position embeddings), else ``config.image_size``. Grid = input size / patch size: 16x16 x 1024 for
ViT-L/14 at 224. Mean/std come from ``preprocessor_config.json``, else ImageNet's.

``weights``: a hub model id (``facebook/dinov2-large``) or a local ``save_pretrained`` directory.
Tiny: ``Dinov2Model`` with hidden size 32, 2 layers, patch 8 at 56 px: a 7x7 x 32 grid.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersModel, DINOv3ViTModel
from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from distill.features import TeacherOutput, TeacherSpec
from distill.teachers._hf import (
    load_pretrained,
    processor_input_size,
    read_preprocessor,
    seeded,
    tokens_to_grid,
    vit_spec,
)
from distill.teachers.base import Teacher
from distill.teachers.registry import TeacherEntry, register_teacher

NAME = "dinov2"
DEFAULT_WEIGHTS = "facebook/dinov2-large"
MODEL_CLASSES: dict[str, type[Dinov2Model] | type[Dinov2WithRegistersModel]] = {
    "dinov2": Dinov2Model,
    "dinov2_with_registers": Dinov2WithRegistersModel,
}


def tiny_config() -> Dinov2Config:
    """The tiny teacher's config (a fresh object each call: models keep a reference to theirs)."""
    return Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=56, patch_size=8
    )


def dinov2_spec(config: Any, preprocessor: dict[str, Any]) -> TeacherSpec:
    return dino_spec(NAME, config, preprocessor)


def dino_spec(name: str, config: Any, preprocessor: dict[str, Any]) -> TeacherSpec:
    """A DINO family spec (v2, v3): input size from the image processor's crop (else config.image_size);
    patch and CLS channels = hidden size."""
    return vit_spec(
        name,
        config,
        preprocessor,
        IMAGENET_DEFAULT_MEAN,
        IMAGENET_DEFAULT_STD,
        cls_channels=int(config.hidden_size),
        input_size=processor_input_size(preprocessor),
    )


def register_tokens(config: Any) -> int:
    """Tokens between CLS and the patches: the config's register count for register checkpoints, else 0."""
    with_registers = config.model_type in ("dinov2_with_registers", "dinov3_vit")
    return int(config.num_register_tokens) if with_registers else 0


class Dinov2Teacher(Teacher):
    """DINOv2 (with or without registers): final-layernorm patch tokens and CLS token."""

    def __init__(
        self, model: Dinov2Model | Dinov2WithRegistersModel | DINOv3ViTModel, spec: TeacherSpec
    ) -> None:
        super().__init__(spec)
        self.model = model
        self.prefix_tokens = 1 + register_tokens(model.config)

    def encode(self, pixel_values: torch.Tensor) -> TeacherOutput:
        hidden = self.model(pixel_values=pixel_values).last_hidden_state
        return TeacherOutput(
            patch=tokens_to_grid(hidden[:, self.prefix_tokens :], self.spec), cls=hidden[:, 0]
        )


def build_tiny() -> Dinov2Teacher:
    """Seeded random-init Dinov2Model miniature (same class as the real teacher)."""
    with seeded(0):
        model = Dinov2Model(tiny_config()).eval()
    return Dinov2Teacher(model, dinov2_spec(model.config, {}))


def load_weights(weights: str) -> Dinov2Teacher:
    """A hub id or local directory holding a ``dinov2`` or ``dinov2_with_registers`` checkpoint."""
    model = load_pretrained(NAME, weights, MODEL_CLASSES)
    return Dinov2Teacher(model, dinov2_spec(model.config, read_preprocessor(weights)))


register_teacher(TeacherEntry(NAME, DEFAULT_WEIGHTS, build_tiny, load_weights, decoder="pca"))
