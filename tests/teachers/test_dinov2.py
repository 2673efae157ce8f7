"""DINOv2 teacher: geometry from the checkpoint, register tokens, strict offline loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from teacher_helpers import assert_same_teacher
from transformers import Dinov2Config, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from distill.teachers import load_teacher, mae
from distill.teachers._hf import seeded
from distill.teachers.dinov2 import Dinov2Teacher, dinov2_spec, tiny_config


@pytest.fixture(scope="module")
def tiny() -> Dinov2Teacher:
    teacher = load_teacher("dinov2", source="tiny", device="cpu")
    assert isinstance(teacher, Dinov2Teacher)
    return teacher


def test_real_dinov2_large_geometry_is_16x16_at_224() -> None:
    # facebook/dinov2-large: config.json says image_size 518 (pretraining), the processor crops 224.
    config = Dinov2Config(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, image_size=518, patch_size=14
    )
    processor = {
        "crop_size": {"height": 224, "width": 224},
        "do_center_crop": True,
        "size": {"shortest_edge": 256},
    }
    spec = dinov2_spec(config, processor)
    assert (spec.input_size, spec.grid, spec.channels, spec.cls_channels) == (224, (16, 16), 1024, 1024)
    assert spec.mean == pytest.approx((0.485, 0.456, 0.406)) and spec.std == pytest.approx(
        (0.229, 0.224, 0.225)
    )
    # Without a processor config the model's own image size is used.
    assert dinov2_spec(config, {}).grid == (37, 37)


def test_features_are_the_final_layernorm_tokens(tiny: Dinov2Teacher, images: torch.Tensor) -> None:
    out = tiny(images)
    with torch.inference_mode():
        result = tiny.model(pixel_values=tiny.preprocess(images), output_hidden_states=True)
        hidden = tiny.model.layernorm(result.hidden_states[-1])  # last block, then the final layernorm
    height, width = tiny.spec.grid
    assert hidden.shape[1] == 1 + height * width
    assert out.cls is not None
    torch.testing.assert_close(out.cls, hidden[:, 0], atol=1e-6, rtol=0)
    # Raster order: grid cell (i, j) is sequence position 1 + i * w + j.
    for i, j in [(0, 0), (0, width - 1), (height - 1, 0), (height // 2, width // 3)]:
        torch.testing.assert_close(out.patch[:, i, j], hidden[:, 1 + i * width + j], atol=1e-6, rtol=0)


def test_save_pretrained_directory_round_trips(
    tiny: Dinov2Teacher, images: torch.Tensor, tmp_path: Path
) -> None:
    tiny.model.save_pretrained(tmp_path)
    loaded = load_teacher("dinov2", source="hub", weights=str(tmp_path), device="cpu")
    assert_same_teacher(loaded, tiny, images)


def test_processor_config_sets_input_size_and_normalisation(
    tiny: Dinov2Teacher, images: torch.Tensor, tmp_path: Path
) -> None:
    tiny.model.save_pretrained(tmp_path)
    processor = {
        "crop_size": {"height": 48, "width": 48},
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.25, 0.25, 0.25],
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(processor))
    loaded = load_teacher("dinov2", source="hub", weights=str(tmp_path), device="cpu")
    assert (loaded.spec.input_size, loaded.spec.grid) == (48, (6, 6))
    assert loaded.spec.mean == (0.5, 0.5, 0.5) and loaded.spec.std == (0.25, 0.25, 0.25)
    assert loaded(images).patch.shape == (2, 6, 6, 32)


def test_register_tokens_are_dropped_by_the_configured_count(images: torch.Tensor, tmp_path: Path) -> None:
    base = tiny_config()
    config = Dinov2WithRegistersConfig(
        hidden_size=base.hidden_size,
        num_hidden_layers=base.num_hidden_layers,
        num_attention_heads=base.num_attention_heads,
        mlp_ratio=base.mlp_ratio,
        image_size=base.image_size,
        patch_size=base.patch_size,
        num_register_tokens=3,
    )
    with seeded(1):
        model = Dinov2WithRegistersModel(config).eval()
    model.save_pretrained(tmp_path)
    teacher = load_teacher("dinov2", source="hub", weights=str(tmp_path), device="cpu")
    assert isinstance(teacher, Dinov2Teacher) and isinstance(teacher.model, Dinov2WithRegistersModel)
    out = teacher(images)
    with torch.inference_mode():
        hidden = model(pixel_values=teacher.preprocess(images)).last_hidden_state
    height, width = teacher.spec.grid
    assert hidden.shape[1] == 1 + 3 + height * width
    assert torch.equal(out.patch, hidden[:, 4:].reshape(2, height, width, -1))
    assert out.cls is not None and torch.equal(out.cls, hidden[:, 0])


def test_a_checkpoint_of_another_family_is_refused(tmp_path: Path) -> None:
    mae.build_tiny().model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"'dinov2'.*'vit_mae' checkpoint"):
        load_teacher("dinov2", source="hub", weights=str(tmp_path))


def test_a_checkpoint_with_missing_weights_is_refused(tiny: Dinov2Teacher, tmp_path: Path) -> None:
    tiny.model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    dropped = "layernorm.weight"
    assert dropped in tensors
    del tensors[dropped]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"'dinov2'.*missing keys: layernorm\.weight"):
        load_teacher("dinov2", source="hub", weights=str(tmp_path))


def test_missing_paths_and_unknown_ids_name_what_was_tried(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_teacher("dinov2", source="hub", weights=str(missing))
    with pytest.raises(OSError, match=r"'dinov2'.*'distill-tests/no-such-model'.*hub"):
        load_teacher("dinov2", source="hub", weights="distill-tests/no-such-model")
    a_file = tmp_path / "model.safetensors"
    a_file.write_bytes(b"")
    with pytest.raises(ValueError, match="is a file"):
        load_teacher("dinov2", source="hub", weights=str(a_file))
