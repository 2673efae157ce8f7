"""Pretrained backbone initialisation by path (the code path a hub id takes), strictly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from student_fixtures import images, make_config, save_deit_like
from transformers import ViTModel

from distill.models import PRESETS, Student


def test_pretrained_weights_are_loaded_from_a_deit_style_directory(tmp_path: Path) -> None:
    source = save_deit_like(tmp_path / "deit")
    student = Student(make_config(pretrained=str(tmp_path / "deit")))
    want = source.vit.state_dict()
    got = student.backbone.state_dict()
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
    with torch.no_grad():
        reference = source.vit(pixel_values=student.normalize(images(2))).last_hidden_state
        torch.testing.assert_close(student.backbone_tokens(images(2)), reference)


def test_pretrained_position_embeddings_are_resampled_to_the_student_grid(tmp_path: Path) -> None:
    source = save_deit_like(tmp_path / "deit", image_size=32)  # 2x2 grid; the student trains at 4x4
    student = Student(make_config(pretrained=str(tmp_path / "deit")))
    table = student.backbone.embeddings.position_embeddings
    assert table.shape == (1, 17, PRESETS["tiny"].backbone.width)
    assert torch.equal(table[:, 0], source.vit.embeddings.position_embeddings[:, 0])
    assert torch.equal(student.backbone.embeddings.cls_token, source.vit.embeddings.cls_token)


def test_a_checkpoint_missing_a_tensor_is_refused_naming_it(tmp_path: Path) -> None:
    save_deit_like(tmp_path / "deit")
    weights = tmp_path / "deit" / "model.safetensors"
    tensors = load_file(str(weights))
    del tensors["vit.layernorm.weight"]
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing \['layernorm.weight'\]"):
        Student(make_config(pretrained=str(tmp_path / "deit")))


def test_a_checkpoint_of_another_width_is_refused(tmp_path: Path) -> None:
    save_deit_like(tmp_path / "deit", hidden=24)
    with pytest.raises(ValueError, match="hidden_size: ours 48, checkpoint 24"):
        Student(make_config(pretrained=str(tmp_path / "deit")))


def test_random_init_is_deterministic_and_not_pretrained() -> None:
    torch.manual_seed(0)
    a = Student(make_config())
    torch.manual_seed(0)
    b = Student(make_config())
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    assert isinstance(a.backbone, ViTModel) and a.backbone.config._attn_implementation == "sdpa"


def test_an_unreachable_pretrained_source_names_it_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(OSError, match=r"cannot load the pretrained backbone '.*nowhere'.*pretrained=None"):
        Student(make_config(pretrained=str(tmp_path / "nowhere")))
