"""Teacher family ``sam_hf`` (transformers ``SamModel``): the vision encoder's image embeddings.

The transformers alternative to ``sam`` for feature extraction only (no decoder); a separate
registry name because its features are not ``sam``'s.
"""

from __future__ import annotations

from typing import Any

import torch

from distill.features import TeacherOutput, TeacherSpec
from distill.teachers._hf import (
    Triple,
    load_pretrained,
    normalization,
    read_preprocessor,
    seeded,
    square_size,
)
from distill.teachers.base import Teacher
from distill.teachers.registry import TeacherEntry, register_teacher
from distill.teachers.sam_arch import SAM_ARCHS, SAM_MEAN_UNIT, SAM_STD_UNIT, TINY_SEED


class SamHfTeacher(Teacher):
    """transformers ``SamModel``: the vision encoder's image embeddings as features."""

    def __init__(self, model: Any, mean: Triple, std: Triple) -> None:
        vision = model.config.vision_config
        size = square_size(vision.image_size, "sam_hf image_size")
        grid = size // square_size(vision.patch_size, "sam_hf patch_size")
        spec = TeacherSpec(
            name="sam_hf",
            input_size=size,
            mean=mean,
            std=std,
            grid=(grid, grid),
            channels=int(vision.output_channels),
            cls_channels=None,
        )
        super().__init__(spec)
        self.model = model

    def encode(self, pixel_values: torch.Tensor) -> TeacherOutput:
        embedding = self.model.get_image_embeddings(pixel_values)  # [B, C, h, w]
        return TeacherOutput(patch=embedding.permute(0, 2, 3, 1).contiguous(), cls=None)


def tiny_sam_hf_config() -> Any:
    """A SamConfig with the same miniature sizes as the ``tiny`` segment-anything type."""
    from transformers import SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

    arch = SAM_ARCHS["tiny"]
    vision = SamVisionConfig(
        hidden_size=arch.encoder_embed_dim,
        output_channels=arch.prompt_embed_dim,
        num_hidden_layers=arch.encoder_depth,
        num_attention_heads=arch.encoder_num_heads,
        image_size=arch.image_size,
        patch_size=arch.patch_size,
        window_size=arch.window_size,
        global_attn_indexes=list(arch.encoder_global_attn_indexes),
        num_pos_feats=arch.prompt_embed_dim // 2,
        initializer_range=0.02,  # the default 1e-10 makes a random miniature output ~0 everywhere
    )
    prompt = SamPromptEncoderConfig(
        hidden_size=arch.prompt_embed_dim,
        image_size=arch.image_size,
        patch_size=arch.patch_size,
        mask_input_channels=arch.mask_in_chans,
    )
    decoder = SamMaskDecoderConfig(
        hidden_size=arch.prompt_embed_dim,
        mlp_dim=arch.decoder_mlp_dim,
        num_hidden_layers=arch.decoder_depth,
        num_attention_heads=arch.decoder_num_heads,
        iou_head_hidden_dim=arch.iou_head_hidden_dim,
    )
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def build_tiny_sam_hf() -> SamHfTeacher:
    from transformers import SamModel

    with seeded(TINY_SEED):
        model = SamModel(tiny_sam_hf_config()).eval()
    return SamHfTeacher(model, SAM_MEAN_UNIT, SAM_STD_UNIT)


def load_sam_hf(weights: str) -> SamHfTeacher:
    """A hub id or local ``save_pretrained`` directory of a transformers SamModel, loaded strictly."""
    from transformers import SamModel

    model = load_pretrained("sam_hf", weights, {"sam": SamModel})
    mean, std = normalization(read_preprocessor(weights), SAM_MEAN_UNIT, SAM_STD_UNIT)
    return SamHfTeacher(model, mean, std)


register_teacher(
    TeacherEntry(
        name="sam_hf",
        default_weights="facebook/sam-vit-huge",
        build_tiny=build_tiny_sam_hf,
        load_weights=load_sam_hf,
        decoder=None,
    )
)
