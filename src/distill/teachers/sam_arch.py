"""segment-anything's model types as data: every size of each, and building a model of a type.

``SAM_ARCHS`` holds the official ``vit_b``, ``vit_l`` and ``vit_h`` sizes (as in
``segment_anything.build_sam``) and ``tiny``, the offline miniature that ``sam`` and ``sam_hf``
both build.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn

from distill.teachers._hf import Triple

TINY_SEED = 0
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)  # 0-255 units, as segment-anything stores them
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


def unit_rgb(values: Sequence[float] | torch.Tensor) -> Triple:
    """SAM's 0-255 pixel mean/std -> [0, 1] units, rounded past float32 noise of the model's buffers."""
    r, g, b = (
        round(float(v) / 255.0, 6) for v in (values.flatten() if isinstance(values, torch.Tensor) else values)
    )
    return (r, g, b)


SAM_MEAN_UNIT = unit_rgb(SAM_PIXEL_MEAN)  # = ImageNet's, which transformers' SamImageProcessor uses
SAM_STD_UNIT = unit_rgb(SAM_PIXEL_STD)


@dataclass(frozen=True)
class SamArch:
    """Every size of a segment-anything model; defaults are those of the official checkpoints."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256  # = image embedding channels = mask decoder width
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256


SAM_ARCHS: dict[str, SamArch] = {
    # The official sizes, as in segment_anything.build_sam.
    "vit_b": SamArch(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamArch(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamArch(1280, 32, 16, (7, 15, 23, 31)),
    # The offline miniature: 64 px, 8x8 grid of 32 channels, one windowed and one global block.
    "tiny": SamArch(
        32,
        2,
        2,
        (1,),
        image_size=64,
        patch_size=8,
        window_size=4,
        prompt_embed_dim=32,
        mask_in_chans=8,
        decoder_mlp_dim=64,
        decoder_num_heads=2,
        iou_head_hidden_dim=32,
    ),
}


def build_sam_model(arch: SamArch) -> Sam:
    """segment-anything's ``_build_sam`` with every size taken from ``arch`` (no checkpoint)."""
    grid = arch.image_size // arch.patch_size
    model = Sam(
        image_encoder=ImageEncoderViT(
            depth=arch.encoder_depth,
            embed_dim=arch.encoder_embed_dim,
            img_size=arch.image_size,
            mlp_ratio=4,
            norm_layer=functools.partial(nn.LayerNorm, eps=1e-6),
            num_heads=arch.encoder_num_heads,
            patch_size=arch.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=arch.encoder_global_attn_indexes,
            window_size=arch.window_size,
            out_chans=arch.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(arch.image_size, arch.image_size),
            mask_in_chans=arch.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=arch.decoder_depth,
                embedding_dim=arch.prompt_embed_dim,
                mlp_dim=arch.decoder_mlp_dim,
                num_heads=arch.decoder_num_heads,
            ),
            transformer_dim=arch.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
        pixel_mean=list(SAM_PIXEL_MEAN),
        pixel_std=list(SAM_PIXEL_STD),
    )
    return model.eval()
