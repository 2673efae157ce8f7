"""The depth_anything teacher: the features its head consumes, and exact depth decoding from them."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionConfig, CLIPVisionModel

from distill.features import TeacherOutput
from distill.synthetic import render_scene
from distill.teachers import load_teacher
from distill.teachers.depth_anything import (
    DepthAnythingTeacher,
    build_tiny_depth_anything,
    load_depth_anything,
)


@pytest.fixture(scope="module")
def teacher() -> DepthAnythingTeacher:
    built = load_teacher("depth_anything", device="cpu")
    assert isinstance(built, DepthAnythingTeacher)
    return built


@pytest.fixture(scope="module")
def views() -> torch.Tensor:
    """Canonical views (uint8, 80 px: the teacher resamples them to its 56 px input)."""
    scenes = np.stack([np.array(render_scene(seed, (80, 80))) for seed in (4, 5, 6)])
    return torch.from_numpy(scenes).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model written by save_pretrained, as a user's local checkpoint directory."""
    path = tmp_path_factory.mktemp("depth_anything_tiny")
    build_tiny_depth_anything().model.save_pretrained(path)
    return path


def test_tiny_spec(teacher: DepthAnythingTeacher, views: torch.Tensor) -> None:
    spec = teacher.spec
    assert (spec.name, spec.input_size, spec.grid, spec.cls_channels) == ("depth_anything", 56, (4, 4), None)
    assert spec.channels == 4 * 32  # four backbone maps of the 32-wide DINOv2
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
    out = teacher(views)
    assert out.patch.shape == (3, 4, 4, 128) and out.cls is None
    assert out.patch.std() > 0.5


def test_real_size_spec_is_read_from_the_config() -> None:
    """Depth-Anything-V2-Small's layout (DepthAnythingConfig's defaults): 224 px -> 16x16 x (4 * 384)."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation

    with torch.device("meta"):  # shapes only: no memory, no init
        model = DepthAnythingForDepthEstimation(DepthAnythingConfig())
    spec = DepthAnythingTeacher(model).spec
    assert (spec.input_size, spec.grid, spec.channels, spec.cls_channels) == (224, (16, 16), 1536, None)
    assert DepthAnythingTeacher(model, input_size=518).spec.grid == (37, 37)  # the model's native size


def test_tiny_is_deterministic() -> None:
    a, b = build_tiny_depth_anything().model.state_dict(), build_tiny_depth_anything().model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_features_are_the_hidden_states_the_neck_reads(
    teacher: DepthAnythingTeacher, views: torch.Tensor
) -> None:
    """Channel block i is layer out_indices[i] of the backbone, layer-normed, without its CLS token."""
    out = teacher(views)
    backbone = teacher.model.backbone
    with torch.inference_mode():
        states = backbone(teacher.preprocess(views), output_hidden_states=True).hidden_states
    out_indices = teacher.model.config.backbone_config.out_indices
    assert list(out_indices) == [1, 2, 3, 4]
    for i, layer in enumerate(out_indices):
        expected = backbone.layernorm(states[layer])[:, 1:].reshape(3, 4, 4, 32)
        torch.testing.assert_close(out.patch[..., i * 32 : (i + 1) * 32], expected, rtol=1e-6, atol=1e-6)


def test_depth_from_features_equals_predicted_depth(
    teacher: DepthAnythingTeacher, views: torch.Tensor
) -> None:
    """Exactness: the decoder fed the teacher's own features reproduces the model's own depth."""
    depth = teacher.depth_from_features(teacher(views))
    with torch.inference_mode():
        reference = teacher.model(pixel_values=teacher.preprocess(views)).predicted_depth
    assert depth.shape == reference.shape == (3, 56, 56)
    assert reference.std() > 0, "a constant depth map would make the comparison vacuous"
    torch.testing.assert_close(depth, reference, rtol=1e-5, atol=1e-7)
    resized = teacher.depth_from_features(teacher(views), image_size=80)
    assert resized.shape == (3, 80, 80)
    # The decoder depends on the features: other features, other depth.
    shuffled = TeacherOutput(teacher(views).patch.flip(0), None)
    assert not torch.allclose(teacher.depth_from_features(shuffled), depth)


def test_depth_from_features_rejects_wrong_shape(teacher: DepthAnythingTeacher) -> None:
    with pytest.raises(ValueError, match=r"features must be \[B, 4, 4, 128\], got \(1, 4, 4, 64\)"):
        teacher.depth_from_features(TeacherOutput(torch.zeros(1, 4, 4, 64), None))


def test_save_pretrained_round_trip(teacher: DepthAnythingTeacher, views: torch.Tensor, saved: Path) -> None:
    loaded = load_teacher("depth_anything", source="hub", weights=str(saved), device="cpu")
    assert isinstance(loaded, DepthAnythingTeacher) and loaded.spec == teacher.spec
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    torch.testing.assert_close(loaded(views).patch, teacher(views).patch, rtol=0, atol=0)
    torch.testing.assert_close(
        loaded.depth_from_features(loaded(views)),
        teacher.depth_from_features(teacher(views)),
        rtol=0,
        atol=0,
    )


def test_spec_follows_the_checkpoint(saved: Path, tmp_path: Path, views: torch.Tensor) -> None:
    """Mean/std come from preprocessor_config.json; input size is adjustable and the grid follows it."""
    custom = tmp_path / "custom"
    custom.mkdir()
    for item in saved.iterdir():
        (custom / item.name).write_bytes(item.read_bytes())
    (custom / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5] * 3, "image_std": [0.25] * 3})
    )
    loaded = load_depth_anything(str(custom), input_size=28)
    assert loaded.spec.mean == (0.5, 0.5, 0.5) and loaded.spec.std == (0.25, 0.25, 0.25)
    assert loaded.spec.input_size == 28 and loaded.spec.grid == (2, 2)
    features = loaded.freeze()(views)
    assert features.patch.shape == (3, 2, 2, 128)
    assert loaded.depth_from_features(features).shape == (3, 28, 28)
    with pytest.raises(ValueError, match="input_size 30 is not a multiple of the patch size 14"):
        load_depth_anything(str(saved), input_size=30)


def test_missing_checkpoint_names_the_teacher(tmp_path: Path) -> None:
    with pytest.raises(OSError, match=r"teacher 'depth_anything'.*Depth-Anything-V2-Small-hf"):
        load_teacher("depth_anything", source="hub", device="cpu")  # default id, not in any cache here
    with pytest.raises(FileNotFoundError, match=r"teacher 'depth_anything'.*no checkpoint directory"):
        load_teacher("depth_anything", source="hub", weights=str(tmp_path / "absent"), device="cpu")


def test_other_architecture_is_refused(tmp_path: Path) -> None:
    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    CLIPVisionModel(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"teacher 'depth_anything'.*'clip_vision_model' checkpoint"):
        load_teacher("depth_anything", source="hub", weights=str(tmp_path), device="cpu")


def test_incomplete_or_reshaped_checkpoint_is_refused(saved: Path, tmp_path: Path) -> None:
    incomplete = tmp_path / "incomplete"
    build_tiny_depth_anything().model.save_pretrained(incomplete)
    state = load_file(str(incomplete / "model.safetensors"))
    del state["head.conv3.weight"]
    save_file(state, str(incomplete / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"teacher 'depth_anything'.*missing keys: head\.conv3\.weight"):
        load_teacher("depth_anything", source="hub", weights=str(incomplete), device="cpu")

    reshaped = tmp_path / "reshaped"
    reshaped.mkdir()
    (reshaped / "model.safetensors").write_bytes((saved / "model.safetensors").read_bytes())
    config = json.loads((saved / "config.json").read_text())
    config["fusion_hidden_size"] = 24
    (reshaped / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"teacher 'depth_anything'.*does not fit"):
        load_teacher("depth_anything", source="hub", weights=str(reshaped), device="cpu")
