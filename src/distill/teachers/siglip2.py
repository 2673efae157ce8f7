"""Teacher family ``siglip2``: SigLIP 2, fixed-resolution (FixRes) variant.

SigLIP 2 ships in two variants. The FixRes checkpoints (``google/siglip2-so400m-patch16-384``, the
default, ``google/siglip2-base-patch16-224``, ...) keep SigLIP's architecture: their config says
``model_type: siglip`` and transformers builds them as ``SiglipModel``, so this teacher loads their
vision tower as ``SiglipVisionModel``. The NaFlex checkpoints (``model_type: siglip2``,
``Siglip2VisionModel``) take a variable number of patches with an attention mask and per-image
spatial shapes; a distillation target needs one fixed grid per teacher, which FixRes gives directly
at the resolution it was trained for, so NaFlex checkpoints are refused as another architecture.

Targets:
- patch tokens ``[B, h, w, width]``: ``last_hidden_state``, the tokens after ``post_layernorm`` (SigLIP
  has no CLS token: every token is a patch, raster order);
- CLS ``[B, width]``: the pooled image embedding of the attention-pooling (MAP) head, the vector that
  aligns with text (``SiglipModel.get_image_features``); it is the summary head's target.

``weights``: a hub id or a local ``save_pretrained`` directory of a full ``SiglipModel`` (its text tower is
ignored) or of a ``SiglipVisionModel``. Geometry: input size = ``config.image_size`` (fixed position
embeddings), mean/std from ``preprocessor_config.json``, else SigLIP's 0.5/0.5.
Tiny: width 32, 2 layers, patch 8 at 48 px (a 6x6 x 32 grid), CLS of 32 channels.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import SiglipVisionConfig, SiglipVisionModel
from transformers.utils.constants import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD

from distill.features import TeacherOutput, TeacherSpec
from distill.teachers._hf import load_pretrained, read_preprocessor, seeded, tokens_to_grid, vit_spec
from distill.teachers.base import Teacher
from distill.teachers.registry import TeacherEntry, register_teacher

NAME = "siglip2"
DEFAULT_WEIGHTS = "google/siglip2-so400m-patch16-384"
TEXT_TOWER_KEYS = ("text_model.", "logit_scale", "logit_bias")  # in full SiglipModel checkpoints


def tiny_config() -> SiglipVisionConfig:
    """The tiny teacher's config (a fresh object each call: models keep a reference to theirs)."""
    return SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=48,
        patch_size=8,
    )


def siglip2_spec(config: Any, preprocessor: dict[str, Any]) -> TeacherSpec:
    """Input size = config.image_size; patch and pooled embedding both hidden_size wide."""
    # transformers 5.17 (and older) may leave the field unset; its model then builds the head
    if not getattr(config, "vision_use_head", True):
        raise ValueError(
            f"teacher {NAME!r}: the checkpoint has no attention-pooling head (vision_use_head=False), "
            "so it has no pooled image embedding; use a SigLIP 2 image-text checkpoint"
        )
    return vit_spec(
        NAME,
        config,
        preprocessor,
        IMAGENET_STANDARD_MEAN,
        IMAGENET_STANDARD_STD,
        cls_channels=int(config.hidden_size),
    )


class Siglip2Teacher(Teacher):
    """SigLIP (2, FixRes) vision tower: post-layernorm patch tokens and the pooled image embedding."""

    def __init__(self, model: SiglipVisionModel, spec: TeacherSpec) -> None:
        super().__init__(spec)
        self.model = model

    def encode(self, pixel_values: torch.Tensor) -> TeacherOutput:
        out = self.model(pixel_values=pixel_values)
        return TeacherOutput(patch=tokens_to_grid(out.last_hidden_state, self.spec), cls=out.pooler_output)


def build_tiny() -> Siglip2Teacher:
    """Seeded random-init SiglipVisionModel miniature (the class FixRes SigLIP 2 checkpoints load as)."""
    with seeded(0):
        model = SiglipVisionModel(tiny_config()).eval()
    return Siglip2Teacher(model, siglip2_spec(model.config, {}))


def load_weights(weights: str) -> Siglip2Teacher:
    """A hub id or local directory of a full SigLIP (``siglip``) or vision-only (``siglip_vision_model``) checkpoint."""
    classes = {"siglip": SiglipVisionModel, "siglip_vision_model": SiglipVisionModel}
    model = load_pretrained(NAME, weights, classes, ignore_unexpected=TEXT_TOWER_KEYS)
    return Siglip2Teacher(model, siglip2_spec(model.config, read_preprocessor(weights)))


register_teacher(TeacherEntry(NAME, DEFAULT_WEIGHTS, build_tiny, load_weights, decoder=None))
