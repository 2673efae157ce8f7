"""SigLIP 2 (FixRes) teacher: patch tokens + pooled embedding, full and vision-only checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from teacher_helpers import assert_same_teacher
from transformers import (
    Siglip2VisionConfig,
    Siglip2VisionModel,
    SiglipConfig,
    SiglipModel,
    SiglipVisionConfig,
)

from distill.teachers import load_teacher
from distill.teachers._hf import seeded
from distill.teachers.siglip2 import Siglip2Teacher, siglip2_spec, tiny_config


@pytest.fixture(scope="module")
def tiny() -> Siglip2Teacher:
    teacher = load_teacher("siglip2", source="tiny", device="cpu")
    assert isinstance(teacher, Siglip2Teacher)
    return teacher


def test_real_so400m_patch16_384_geometry() -> None:
    config = SiglipVisionConfig(
        hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, image_size=384, patch_size=16
    )
    spec = siglip2_spec(config, {"image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    assert (spec.input_size, spec.grid, spec.channels, spec.cls_channels) == (384, (24, 24), 1152, 1152)


def test_targets_are_post_layernorm_tokens_and_the_pooled_embedding(
    tiny: Siglip2Teacher, images: torch.Tensor
) -> None:
    out = tiny(images)
    with torch.inference_mode():
        result = tiny.model(pixel_values=tiny.preprocess(images), output_hidden_states=True)
        tokens = tiny.model.post_layernorm(result.hidden_states[-1])
        pooled = tiny.model.head(tokens)
    height, width = tiny.spec.grid
    assert tokens.shape[1] == height * width  # no CLS token: every token is a patch
    torch.testing.assert_close(out.patch, tokens.reshape(2, height, width, -1), atol=1e-6, rtol=0)
    assert out.cls is not None
    torch.testing.assert_close(out.cls, pooled, atol=1e-6, rtol=0)


def test_vision_checkpoint_round_trips(tiny: Siglip2Teacher, images: torch.Tensor, tmp_path: Path) -> None:
    tiny.model.save_pretrained(tmp_path)
    loaded = load_teacher("siglip2", source="hub", weights=str(tmp_path), device="cpu")
    assert_same_teacher(loaded, tiny, images)


def test_full_image_text_checkpoint_loads_its_vision_tower(images: torch.Tensor, tmp_path: Path) -> None:
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = SiglipConfig(text_config={**text, "vocab_size": 64}, vision_config=tiny_config().to_dict())
    with seeded(3):
        full = SiglipModel(config).eval()
    full.save_pretrained(tmp_path)
    teacher = load_teacher("siglip2", source="hub", weights=str(tmp_path), device="cpu")
    out = teacher(images)
    with torch.inference_mode():
        embeds = full.get_image_features(pixel_values=teacher.preprocess(images)).pooler_output
    assert out.cls is not None
    torch.testing.assert_close(out.cls, embeds, atol=1e-5, rtol=1e-5)


def test_naflex_checkpoints_are_refused_as_another_architecture(tmp_path: Path) -> None:
    config = Siglip2VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    Siglip2VisionModel(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"'siglip2'.*'siglip2_vision_model' checkpoint"):
        load_teacher("siglip2", source="hub", weights=str(tmp_path))
