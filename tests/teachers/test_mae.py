"""MAE teacher: unmasked raster-order tokens, and a decoder that reproduces ViTMAE's own output."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from teacher_helpers import assert_same_teacher
from transformers import ViTMAEConfig, ViTMAEForPreTraining, ViTMAEModel

from distill.features import TeacherOutput
from distill.teachers import dinov2, load_teacher
from distill.teachers._hf import seeded
from distill.teachers.mae import MaeTeacher, mae_spec, tiny_config


@pytest.fixture(scope="module")
def tiny() -> MaeTeacher:
    teacher = load_teacher("mae", source="tiny", device="cpu")
    assert isinstance(teacher, MaeTeacher)
    return teacher


def own_reconstruction(teacher: MaeTeacher, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """What ViTMAEForPreTraining's own forward gives: logits, unpatchified, pixel normalisation undone."""
    with torch.inference_mode():
        logits = teacher.model(pixel_values=teacher.preprocess(images), noise=noise).logits
        pixels = teacher.model.unpatchify(logits)
    mean = torch.tensor(teacher.spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(teacher.spec.std).view(1, 3, 1, 1)
    return (pixels * std + mean).clamp(0, 1)


def test_real_vit_mae_large_geometry_is_14x14_at_224() -> None:
    config = ViTMAEConfig(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        image_size=224,
        patch_size=16,
    )
    spec = mae_spec(config, {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]})
    assert (spec.input_size, spec.grid, spec.channels, spec.cls_channels) == (224, (14, 14), 1024, 1024)


def test_tokens_come_back_unmasked_in_raster_order(tiny: MaeTeacher, images: torch.Tensor) -> None:
    out = tiny(images)
    batch, (height, width), channels = images.shape[0], tiny.spec.grid, tiny.spec.channels
    pixel_values = tiny.preprocess(images)
    with torch.inference_mode():
        identity = tiny.model.vit(
            pixel_values=pixel_values, noise=tiny.raster_noise(batch, pixel_values.device)
        )
        # The same images with random noise: HF shuffles the tokens; ids_restore puts them back in raster order.
        noise = torch.rand(batch, height * width, generator=torch.Generator().manual_seed(0))
        shuffled = tiny.model.vit(pixel_values=pixel_values, noise=noise)
    assert torch.equal(identity.ids_restore, torch.arange(height * width).expand(batch, -1))
    assert not identity.mask.any()  # mask ratio 0: nothing removed
    assert not torch.equal(shuffled.ids_restore, identity.ids_restore)
    tokens = shuffled.last_hidden_state[:, 1:]
    unshuffled = torch.gather(tokens, 1, shuffled.ids_restore[..., None].expand(-1, -1, channels))
    torch.testing.assert_close(
        out.patch.reshape(batch, height * width, channels), unshuffled, atol=1e-5, rtol=1e-4
    )
    assert out.cls is not None
    torch.testing.assert_close(out.cls, shuffled.last_hidden_state[:, 0], atol=1e-5, rtol=1e-4)


def test_reconstruct_equals_vit_mae_forward(tiny: MaeTeacher, images: torch.Tensor) -> None:
    features = tiny(images)
    got = tiny.reconstruct(features)
    size = tiny.spec.input_size
    assert got.shape == (images.shape[0], 3, size, size) and got.dtype == torch.float32
    assert got.min() >= 0 and got.max() <= 1
    expected = own_reconstruction(tiny, images, tiny.raster_noise(images.shape[0], torch.device("cpu")))
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    # The decoder reads the features: other features give another picture.
    other = tiny.reconstruct(TeacherOutput(features.patch.flip(0), features.cls))
    assert not torch.allclose(other, got)


def test_reconstruct_refuses_features_of_the_wrong_shape(tiny: MaeTeacher, images: torch.Tensor) -> None:
    features = tiny(images)
    with pytest.raises(ValueError, match=r"\[B, 8, 8, 32\].*\(2, 4, 4, 32\)"):
        tiny.reconstruct(TeacherOutput(features.patch[:, :4, :4], features.cls))
    with pytest.raises(ValueError, match="CLS feature"):
        tiny.reconstruct(TeacherOutput(features.patch, None))
    with pytest.raises(ValueError, match="only used by norm_pix_loss"):
        tiny.reconstruct(features, reference_images=images)


def test_norm_pix_loss_checkpoints_need_reference_images(images: torch.Tensor, tmp_path: Path) -> None:
    config = tiny_config()
    config.norm_pix_loss = True
    with seeded(2):
        ViTMAEForPreTraining(config).save_pretrained(tmp_path)
    teacher = load_teacher("mae", source="hub", weights=str(tmp_path), device="cpu")
    assert isinstance(teacher, MaeTeacher)
    features = teacher(images)
    with pytest.raises(ValueError, match=r"norm_pix_loss.*reference_images"):
        teacher.reconstruct(features)
    got = teacher.reconstruct(features, reference_images=images)
    # Reference: ViTMAE's own logits, un-standardised with each patch's mean/variance as its loss defines them.
    pixel_values = teacher.preprocess(images)
    with torch.inference_mode():
        logits = teacher.model(
            pixel_values=pixel_values, noise=teacher.raster_noise(2, torch.device("cpu"))
        ).logits
        target = teacher.model.patchify(pixel_values)
        logits = logits * (target.var(-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(-1, keepdim=True)
        pixels = teacher.model.unpatchify(logits)
    mean, std = (
        torch.tensor(teacher.spec.mean).view(1, 3, 1, 1),
        torch.tensor(teacher.spec.std).view(1, 3, 1, 1),
    )
    torch.testing.assert_close(got, (pixels * std + mean).clamp(0, 1), atol=1e-6, rtol=0)


def test_save_pretrained_round_trip_forces_mask_ratio_zero(
    tiny: MaeTeacher, images: torch.Tensor, tmp_path: Path
) -> None:
    tiny.model.config.mask_ratio = 0.75  # as the published checkpoints' configs say
    try:
        tiny.model.save_pretrained(tmp_path)
    finally:
        tiny.model.config.mask_ratio = 0.0
    loaded = load_teacher("mae", source="hub", weights=str(tmp_path), device="cpu")
    assert isinstance(loaded, MaeTeacher) and loaded.model.config.mask_ratio == 0.0
    assert_same_teacher(loaded, tiny, images)
    assert torch.equal(loaded.reconstruct(loaded(images)), tiny.reconstruct(tiny(images)))


def test_checkpoints_of_another_family_or_without_decoder_are_refused(tmp_path: Path) -> None:
    dinov2_dir = tmp_path / "dinov2"
    dinov2.build_tiny().model.save_pretrained(dinov2_dir)
    with pytest.raises(ValueError, match=r"'mae'.*'dinov2' checkpoint"):
        load_teacher("mae", source="hub", weights=str(dinov2_dir))
    encoder_only = tmp_path / "encoder_only"
    with seeded(3):
        ViTMAEModel(tiny_config()).save_pretrained(encoder_only)
    with pytest.raises(ValueError, match=r"'mae'.*missing keys: decoder\."):
        load_teacher("mae", source="hub", weights=str(encoder_only))


def test_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"'mae'.*no checkpoint directory"):
        load_teacher("mae", source="hub", weights=str(tmp_path / "absent"))
