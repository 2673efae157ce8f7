"""The student's ViT backbone (transformers ``ViTModel``) and its optional pretrained initialisation."""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from transformers import ViTConfig, ViTModel

from distill.models.config import StudentConfig
from distill.models.decoder import sincos_2d

# Fields that must agree between our preset and a pretrained checkpoint for its weights to mean the same thing.
_ARCH_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "patch_size",
    "num_channels",
    "qkv_bias",
    "hidden_act",
    "layer_norm_eps",
)


# Passed through **kwargs: PreTrainedConfig accepts it, ViTConfig's typed signature does not list it.
_SDPA: dict[str, Any] = {"attn_implementation": "sdpa"}


def vit_config(config: StudentConfig) -> ViTConfig:
    """The transformers config of the student's backbone (DeiT layout, SDPA attention)."""
    size = config.backbone
    return ViTConfig(
        hidden_size=size.width,
        num_hidden_layers=size.depth,
        num_attention_heads=size.heads,
        intermediate_size=size.mlp_dim,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=1e-12,
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_channels=3,
        qkv_bias=True,
        **_SDPA,
    )


def build_backbone(config: StudentConfig, load_pretrained: bool = True) -> ViTModel:
    """A randomly initialised ViT, then (when ``config.pretrained`` is set and asked for) the checkpoint's weights."""
    backbone = ViTModel(vit_config(config), add_pooling_layer=False)
    with torch.no_grad():  # sine-cosine start for the position table (see decoder.sincos_2d)
        table = backbone.embeddings.position_embeddings
        table[0, 1:] = sincos_2d(config.grid, table.shape[-1])
    if load_pretrained and config.pretrained is not None:
        load_pretrained_backbone(backbone, config.pretrained)
    return backbone


def load_pretrained_backbone(backbone: ViTModel, source: str) -> None:
    """Copy a hub id's or local directory's ViT/DeiT weights into ``backbone``, strictly.

    Accepts ViTModel and ViTForImageClassification checkpoints (the DeiT hub layout); a task head
    (``classifier.*``, ``pooler.*``) is the only thing allowed to be left over. Position embeddings
    are resampled when the checkpoint was trained at another resolution.
    """
    try:
        result = ViTModel.from_pretrained(source, add_pooling_layer=False, output_loading_info=True)
    except OSError as err:
        raise OSError(
            f"cannot load the pretrained backbone {source!r}: a hub id needs the hub (or a local mirror), a local "
            f"directory needs config.json + model.safetensors; set pretrained=None for random init. ({err})"
        ) from err
    loaded, info = cast(tuple[ViTModel, dict[str, Any]], result)
    ours, theirs = backbone.config, loaded.config
    differing = [
        f"{key}: ours {getattr(ours, key)!r}, checkpoint {getattr(theirs, key)!r}"
        for key in _ARCH_FIELDS
        if getattr(ours, key) != getattr(theirs, key)
    ]
    if differing:
        raise ValueError(
            f"pretrained backbone {source!r} does not match the student size ({'; '.join(differing)}); pick the matching size"
        )
    missing = sorted(info["missing_keys"])
    mismatched = sorted(str(item) for item in info["mismatched_keys"])
    unexpected = sorted(
        key for key in info["unexpected_keys"] if not key.startswith(("classifier.", "pooler."))
    )
    if missing or mismatched or unexpected or info["error_msgs"]:
        raise ValueError(
            f"pretrained backbone {source!r} does not load cleanly: missing {missing}, wrong shape {mismatched}, "
            f"unexpected {unexpected}, errors {info['error_msgs']}"
        )
    state = loaded.state_dict()
    key = "embeddings.position_embeddings"
    target_shape = backbone.embeddings.position_embeddings.shape
    if state[key].shape != target_shape:
        state[key] = resample_position_embeddings(state[key], target_shape[1] - 1)
    backbone.load_state_dict(state, strict=True)


def resample_position_embeddings(table: torch.Tensor, num_patches: int) -> torch.Tensor:
    """[1, 1 + n, D] -> [1, 1 + num_patches, D] with the patch part resampled bicubically on its square grid."""
    cls_pos, patch_pos = table[:, :1], table[:, 1:]
    old, new = round(patch_pos.shape[1] ** 0.5), round(num_patches**0.5)
    if old * old != patch_pos.shape[1] or new * new != num_patches:
        raise ValueError(
            f"position embeddings of {patch_pos.shape[1]} -> {num_patches} patches: both grids must be square"
        )
    dim = table.shape[-1]
    grid = patch_pos.reshape(1, old, old, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(new, new), mode="bicubic", align_corners=False).to(table.dtype)
    return torch.cat([cls_pos, grid.permute(0, 2, 3, 1).reshape(1, new * new, dim)], dim=1)
