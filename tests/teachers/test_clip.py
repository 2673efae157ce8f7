"""CLIP teachers: open_clip (``clip``) and transformers (``clip_hf``), their targets and weight sources."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save_file
from teacher_helpers import assert_same_teacher
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig

from distill.teachers import dinov2, load_teacher, mae
from distill.teachers._hf import seeded
from distill.teachers.clip import (
    TINY_ARCH,
    HfClipTeacher,
    OpenClipTeacher,
    hf_clip_spec,
    open_clip_spec,
    tiny_clip_model,
    tiny_hf_config,
    tiny_model_config,
)


@pytest.fixture(scope="module")
def tiny() -> OpenClipTeacher:
    teacher = load_teacher("clip", source="tiny", device="cpu")
    assert isinstance(teacher, OpenClipTeacher)
    return teacher


def save_state_dict(state: dict[str, torch.Tensor], path: Path) -> None:
    """A checkpoint file the way users have them: safetensors, or a plain torch pickle of tensors."""
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save(state, path)


def test_real_vit_l_14_geometry_is_16x16_x_1024_with_a_768_cls() -> None:
    with torch.device("meta"):  # the real architecture, no weights allocated
        model = open_clip.CLIP(**open_clip.get_model_config("ViT-L-14"))
    spec = open_clip_spec(model)
    assert (spec.input_size, spec.grid, spec.channels, spec.cls_channels) == (224, (16, 16), 1024, 768)
    assert spec.mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)


def test_patch_tokens_are_ln_post_tokens_and_cls_is_the_image_embedding(
    tiny: OpenClipTeacher, images: torch.Tensor
) -> None:
    out = tiny(images)
    reference = tiny_clip_model()
    pixel_values = tiny.preprocess(images)
    with torch.inference_mode():
        embedding = reference.encode_image(pixel_values)
        # open_clip's own spatial output: last block, final norm applied, as [B, C, h, w].
        grid = reference.visual.forward_intermediates(
            pixel_values, indices=1, normalize_intermediates=True, intermediates_only=True
        )
    assert out.cls is not None
    torch.testing.assert_close(out.cls, embedding, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        out.patch, grid["image_intermediates"][0].permute(0, 2, 3, 1), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_checkpoint_file_round_trips(
    tiny: OpenClipTeacher, images: torch.Tensor, tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"open_clip_model{suffix}"
    save_state_dict(tiny_clip_model().state_dict(), path)
    loaded = load_teacher("clip", source="hub", weights=f"{TINY_ARCH}:{path}", device="cpu")
    assert_same_teacher(loaded, tiny, images)


def test_local_dir_carries_architecture_and_preprocessing(images: torch.Tensor, tmp_path: Path) -> None:
    model = tiny_clip_model()
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "open_clip_model.safetensors"
    )
    config = {
        "model_cfg": tiny_model_config(),
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    }
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    loaded = load_teacher("clip", source="hub", weights=f"local-dir:{tmp_path}", device="cpu")
    assert loaded.spec.mean == (0.5, 0.5, 0.5) and loaded.spec.std == (0.5, 0.5, 0.5)
    with torch.inference_mode():
        expected = model.encode_image(loaded.preprocess(images))
    got = loaded(images).cls
    assert got is not None and torch.equal(got, expected)


def test_a_checkpoint_with_missing_keys_is_refused(tmp_path: Path) -> None:
    state = tiny_clip_model().state_dict()
    del state["visual.proj"]
    path = tmp_path / "incomplete.safetensors"
    save_state_dict(state, path)
    with pytest.raises(ValueError, match=r"(?s)'clip'.*does not match.*Missing.*visual\.proj"):
        load_teacher("clip", source="hub", weights=f"{TINY_ARCH}:{path}")


def test_a_checkpoint_of_another_family_is_refused(tmp_path: Path) -> None:
    dinov2.build_tiny().model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"'clip'.*does not match"):
        load_teacher("clip", source="hub", weights=f"{TINY_ARCH}:{tmp_path / 'model.safetensors'}")


@pytest.mark.parametrize(
    ("weights", "error", "pattern"),
    [
        ("ViT-L-14", ValueError, "must be 'ARCH:TAG'"),
        ("ViT-L-14:no-such-tag", ValueError, "known tags: openai"),
        ("No-Such-Arch:openai", ValueError, "not an open_clip architecture"),
        (f"{TINY_ARCH}:openai", ValueError, "no pretrained tags"),
        ("ViT-L-14:/no/such/file.safetensors", FileNotFoundError, "/no/such/file.safetensors"),
        ("ViT-L-14:weights.pt", FileNotFoundError, "weights.pt"),
        ("local-dir:/no/such/dir", FileNotFoundError, "/no/such/dir"),
    ],
)
def test_bad_weight_strings_say_what_is_wrong(weights: str, error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        load_teacher("clip", source="hub", weights=weights)


def test_real_hf_clip_large_geometry() -> None:
    config = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
        projection_dim=768,
    )
    spec = hf_clip_spec(config, {})
    assert (spec.input_size, spec.grid, spec.channels, spec.cls_channels) == (224, (16, 16), 1024, 768)


def test_hf_vision_checkpoint_round_trips(images: torch.Tensor, tmp_path: Path) -> None:
    tiny_hf = load_teacher("clip_hf", source="tiny", device="cpu")
    assert isinstance(tiny_hf, HfClipTeacher)
    tiny_hf.model.save_pretrained(tmp_path)
    loaded = load_teacher("clip_hf", source="hub", weights=str(tmp_path), device="cpu")
    assert_same_teacher(loaded, tiny_hf, images)


def test_hf_full_clip_checkpoint_gives_its_image_embedding_and_post_layernorm_tokens(
    images: torch.Tensor, tmp_path: Path
) -> None:
    text = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "vocab_size": 64,
    }
    config = CLIPConfig(text_config=text, vision_config=tiny_hf_config().to_dict(), projection_dim=24)
    with seeded(4):
        full = CLIPModel(config).eval()
    full.save_pretrained(tmp_path)
    teacher = load_teacher(
        "clip_hf", source="hub", weights=str(tmp_path), device="cpu"
    )  # the text tower is skipped
    out = teacher(images)
    with torch.inference_mode():
        pixel_values = teacher.preprocess(images)
        embedding = full.get_image_features(pixel_values=pixel_values).pooler_output
        vision = full.vision_model(pixel_values=pixel_values)
        tokens = full.vision_model.post_layernorm(vision.last_hidden_state[:, 1:])
    assert out.cls is not None
    torch.testing.assert_close(out.cls, embedding, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.patch, tokens.reshape(out.patch.shape), atol=1e-6, rtol=0)


def test_hf_clip_refuses_another_family(tmp_path: Path) -> None:
    mae.build_tiny().model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"'clip_hf'.*'vit_mae' checkpoint"):
        load_teacher("clip_hf", source="hub", weights=str(tmp_path))
