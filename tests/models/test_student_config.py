"""StudentConfig: JSON round trip, presets with the published DeiT shapes, clear errors."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
import torch
from student_fixtures import TEACHERS, make_config
from transformers import ViTModel

from distill.models import PRESETS, StudentConfig
from distill.models.backbone import vit_config


@pytest.mark.parametrize(
    "overrides",
    [
        {"bottleneck": "none", "head": "conv", "pretrained": "facebook/deit-small-patch16-224"},
        {"head": "conv", "decoder_dim": 32, "decoder_depth": 3, "decoder_heads": 4},
    ],
)
def test_config_survives_a_json_round_trip(overrides: dict[str, Any]) -> None:
    config = make_config(**overrides)
    text = json.dumps(config.to_dict())
    again = StudentConfig.from_dict(json.loads(text))
    assert again == config
    assert again.teachers["sam"].grid == (16, 16) and again.mean == config.mean
    assert json.loads(text) == config.to_dict()


def _backbone_params(width: int, depth: int, mlp: int, patch: int, tokens: int) -> int:
    """ViT parameter count by hand: patch conv, CLS, position table, blocks, final LayerNorm."""
    embed = 3 * patch * patch * width + width + width + tokens * width
    block = (4 * width * width + 4 * width) + (2 * width * mlp + mlp + width) + 4 * width
    return embed + depth * block + 2 * width


@pytest.mark.parametrize(
    ("size", "published_total", "width", "depth", "heads"),
    [
        ("deit_tiny", 5.72e6, 192, 12, 3),
        ("deit_small", 22.05e6, 384, 12, 6),
        ("deit_base", 86.57e6, 768, 12, 12),
    ],
)
def test_deit_presets_have_the_published_shapes(
    size: str, published_total: float, width: int, depth: int, heads: int
) -> None:
    config = StudentConfig.from_preset(size, {})
    vit = vit_config(config)
    assert (vit.hidden_size, vit.num_hidden_layers, vit.num_attention_heads, vit.patch_size) == (
        width,
        depth,
        heads,
        16,
    )
    assert vit._attn_implementation == "sdpa"
    with torch.device("meta"):
        backbone = ViTModel(vit, add_pooling_layer=False)
    count = sum(p.numel() for p in backbone.parameters())
    assert count == _backbone_params(width, depth, PRESETS[size].backbone.mlp_dim, 16, 197)
    # The published DeiT counts include the 1000-class ImageNet head.
    assert abs(count + width * 1000 + 1000 - published_total) < 0.01e6


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"size": "huge"}, "unknown student size 'huge'"),
        ({"image_size": 70}, "multiple of patch_size"),
        ({"bottleneck": "mean"}, "bottleneck must be one of"),
        ({"head": "linear"}, "head must be one of"),
        ({"decoder_dim": 30, "decoder_heads": 4}, "not divisible by decoder_heads"),
        ({"teachers": {"dino": TEACHERS["dinov2"]}}, "keys must match spec names"),
        ({"teachers": {}, "pixel_head": False}, "predicts nothing"),
        ({"d_z": 0}, "d_z must be positive"),
        ({"decoder_heads": 0}, "decoder_heads must be positive"),
        ({"bottleneck": "none", "decoder_dim": 32}, r"decoder_dim=32 sets the token decoder.*drop them"),
        ({"bottleneck": "none", "decoder_heads": 4}, r"decoder_heads=4 sets the token decoder.*drop them"),
    ],
)
def test_bad_configs_are_refused_with_the_reason(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace(make_config(), **overrides)


def test_no_bottleneck_keeps_a_preset_decoder_depth() -> None:
    # The packaged model presets set decoder_depth (tiny: 1) and must still build with bottleneck=none.
    config = make_config(bottleneck="none", decoder_depth=1)
    assert (config.bottleneck, config.decoder_depth) == ("none", 1)


def test_unknown_keys_in_a_saved_config_are_named() -> None:
    data = make_config().to_dict() | {"heads": "mlp"}
    with pytest.raises(ValueError, match=r"unknown student config keys \['heads'\]"):
        StudentConfig.from_dict(data)


def test_a_config_names_its_preset_fields_or_comes_from_the_table() -> None:
    with pytest.raises(TypeError, match="d_z"):
        StudentConfig(teachers={}, size="deit_base", patch_size=16, decoder_depth=2)  # type: ignore[call-arg]
    base = StudentConfig.from_preset("deit_base", {})
    assert (base.d_z, base.backbone.width, base.patch_size) == (768, 768, 16)
    with pytest.raises(ValueError, match="unknown student size 'huge'"):
        StudentConfig.from_preset("huge", {})
