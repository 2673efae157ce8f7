"""DINOv3 teacher: register tokens dropped, geometry from the checkpoint, strict offline loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from teacher_helpers import assert_same_teacher
from transformers import DINOv3ViTConfig

from distill.teachers import dinov2, load_teacher
from distill.teachers.dinov3 import Dinov3Teacher, dinov3_spec


@pytest.fixture(scope="module")
def tiny() -> Dinov3Teacher:
    teacher = load_teacher("dinov3", source="tiny", device="cpu")
    assert isinstance(teacher, Dinov3Teacher)
    return teacher


def test_real_dinov3_vitl_geometry_is_14x14_at_224() -> None:
    # facebook/dinov3-vitl16-pretrain-lvd1689m: patch 16, 4 registers, the processor resizes to 224x224.
    config = DINOv3ViTConfig(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, patch_size=16, num_register_tokens=4
    )
    processor = {"size": {"height": 224, "width": 224}, "do_center_crop": False}
    spec = dinov3_spec(config, processor)
    assert (spec.input_size, spec.grid, spec.channels, spec.cls_channels) == (224, (14, 14), 1024, 1024)
    assert spec.mean == pytest.approx((0.485, 0.456, 0.406))


def test_patches_are_the_tokens_after_cls_and_registers(tiny: Dinov3Teacher, images: torch.Tensor) -> None:
    registers = tiny.model.config.num_register_tokens
    assert registers == 2 and tiny.prefix_tokens == 3
    out = tiny(images)
    with torch.inference_mode():
        hidden = tiny.model(pixel_values=tiny.preprocess(images)).last_hidden_state
    height, width = tiny.spec.grid
    assert hidden.shape[1] == 1 + registers + height * width
    assert torch.equal(out.patch, hidden[:, 1 + registers :].reshape(2, height, width, -1))
    assert out.cls is not None and torch.equal(out.cls, hidden[:, 0])


def test_save_pretrained_directory_round_trips(
    tiny: Dinov3Teacher, images: torch.Tensor, tmp_path: Path
) -> None:
    tiny.model.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 56, "width": 56}}))
    loaded = load_teacher("dinov3", source="hub", weights=str(tmp_path), device="cpu")
    assert_same_teacher(loaded, tiny, images)


def test_a_checkpoint_of_another_family_is_refused(tmp_path: Path) -> None:
    dinov2.build_tiny().model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"'dinov3'.*'dinov2' checkpoint"):
        load_teacher("dinov3", source="hub", weights=str(tmp_path))
