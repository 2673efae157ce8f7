"""The user-facing student API: forward, encode, encode_video, predict (raw and denormalised)."""

from __future__ import annotations

import pytest
import torch
from student_fixtures import TEACHERS, assert_same_output, images, make_stats, make_student


@pytest.mark.parametrize("bottleneck", ["cls", "none"])
@pytest.mark.parametrize("head", ["mlp", "conv"])
@pytest.mark.parametrize("size", [(64, 64), (96, 64), (32, 32)])
def test_forward_shapes(bottleneck: str, head: str, size: tuple[int, int]) -> None:
    student = make_student(bottleneck=bottleneck, head=head)
    with torch.no_grad():
        out = student(images(2, size))
    assert out.z.shape == (2, 16)
    for name, spec in TEACHERS.items():
        assert out.features[name].patch.shape == (2, *spec.grid, spec.channels)
        cls = out.features[name].cls
        assert (cls is None) == (spec.cls_channels is None)
        if cls is not None:
            assert cls.shape == (2, spec.cls_channels)
    assert out.pixels is not None and out.pixels.shape == (2, 3, *size)


def test_uint8_and_float_images_give_the_same_output() -> None:
    student = make_student()
    batch = images(2)
    with torch.no_grad():
        assert_same_output(student(batch), student(batch.float() / 255.0))


def test_normalisation_matches_a_hand_computation() -> None:
    student = make_student()
    batch = images(2)
    want = (
        batch.double() / 255.0 - torch.tensor([0.485, 0.456, 0.406]).double().view(1, 3, 1, 1)
    ) / torch.tensor([0.229, 0.224, 0.225]).double().view(1, 3, 1, 1)
    torch.testing.assert_close(student.normalize(batch).double(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (torch.zeros(2, 3, 60, 64, dtype=torch.uint8), r"not a multiple of the patch size 16"),
        (torch.zeros(2, 1, 64, 64, dtype=torch.uint8), r"\[B, 3, H, W\]"),
        (torch.zeros(2, 3, 64, 64, dtype=torch.int32), r"uint8 in \[0, 255\] or float"),
    ],
)
def test_bad_images_are_refused_with_the_reason(batch: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_student()(batch)


def test_no_pixel_head_gives_no_pixels() -> None:
    with torch.no_grad():
        assert make_student(pixel_head=False)(images(1)).pixels is None


@pytest.mark.parametrize("bottleneck", ["cls", "none"])
def test_encode_is_the_forward_z(bottleneck: str) -> None:
    student = make_student(bottleneck=bottleneck)
    batch = images(3)
    with torch.no_grad():
        torch.testing.assert_close(student.encode(batch), student(batch).z)


def test_encode_video_chunks_give_the_same_z_as_one_batch() -> None:
    student = make_student()
    frames = images(5, seed=7)
    with torch.no_grad():
        whole = student.encode(frames)
    for batch_size in (1, 2, 5, 64):
        torch.testing.assert_close(
            student.encode_video(frames, batch_size=batch_size), whole, rtol=1e-5, atol=1e-5
        )
    clips = torch.stack([frames[:2], frames[3:]])  # [B=2, T=2, 3, H, W]
    per_clip = student.encode_video(clips, batch_size=3)
    assert per_clip.shape == (2, 2, 16)
    torch.testing.assert_close(per_clip[1], whole[3:], rtol=1e-5, atol=1e-5)
    assert student.encode_video(frames[:0]).shape == (0, 16)


def test_video_z_feeds_predict_and_a_users_trainable_model() -> None:
    """encode_video's z are training data for world models: autograd must accept them."""
    student = make_student()
    z = student.encode_video(images(3, seed=2))
    assert not z.requires_grad and not z.is_inference()
    predicted = student.predict(z)
    assert predicted.z is z or torch.equal(predicted.z, z)
    world_model = torch.nn.Linear(z.shape[-1], z.shape[-1])
    world_model(z).pow(2).mean().backward()
    assert world_model.weight.grad is not None and bool(world_model.weight.grad.abs().sum() > 0)


@pytest.mark.parametrize("size", [(64, 64), (96, 64)])
def test_predict_from_encoded_z_equals_forward(size: tuple[int, int]) -> None:
    student = make_student()
    batch = images(2, size)
    with torch.no_grad():
        assert_same_output(student.predict(student.encode(batch), image_size=size), student(batch))


def test_predict_defaults_to_the_training_size() -> None:
    student = make_student()
    with torch.no_grad():
        out = student.predict(torch.randn(2, 16))
    assert out.pixels is not None and out.pixels.shape == (2, 3, 64, 64)


def test_predict_denormalises_with_the_stats() -> None:
    student = make_student()
    stats = make_stats(student.config)
    z = torch.randn(2, 16)
    with pytest.raises(RuntimeError, match="no feature stats"):
        student.predict(z, denormalize=True)
    student.set_stats(stats)
    with torch.no_grad():
        normed, raw = student.predict(z), student.predict(z, denormalize=True)
    for name, spec in TEACHERS.items():
        want = normed.features[name].patch * stats[name].patch_std + stats[name].patch_mean
        torch.testing.assert_close(raw.features[name].patch, want)
        if spec.cls_channels is not None:
            cls_std, cls_mean, normed_cls = (
                stats[name].cls_std,
                stats[name].cls_mean,
                normed.features[name].cls,
            )
            assert cls_std is not None and cls_mean is not None and normed_cls is not None
            torch.testing.assert_close(raw.features[name].cls, normed_cls * cls_std + cls_mean)
    torch.testing.assert_close(raw.pixels, normed.pixels)


def test_predict_without_the_bottleneck_is_refused() -> None:
    with pytest.raises(RuntimeError, match="bottleneck='none'"):
        make_student(bottleneck="none").predict(torch.randn(2, 16))


def test_predict_checks_z() -> None:
    with pytest.raises(ValueError, match=r"z must be \[B, 16\]"):
        make_student().predict(torch.randn(2, 17))


def test_set_stats_refuses_stats_of_another_shape() -> None:
    student = make_student()
    stats = make_stats(student.config)
    stats["sam"].patch_mean, stats["sam"].patch_std = torch.zeros(9), torch.ones(9)
    with pytest.raises(ValueError, match="teacher 'sam' has 8"):
        student.set_stats(stats)
    del stats["sam"]
    with pytest.raises(ValueError, match=r"missing \['sam'\]"):
        student.set_stats(stats)
