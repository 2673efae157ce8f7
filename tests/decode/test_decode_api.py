"""decode_z / decode_images on a tiny student: chunking, one PCA basis per clip, targets, compare mode."""

from __future__ import annotations

import pytest
import torch

from distill.decode import (
    PIXEL_HEAD,
    MaskSettings,
    decode_features,
    decode_images,
    decode_z,
    fit_pca,
    load_decoder_teachers,
)
from distill.models.student import Student
from distill.teachers import Teacher

SETTINGS = MaskSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)


def _z(student: Student, count: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, student.config.d_z, generator=torch.Generator().manual_seed(seed))


def test_decode_z_chunks_equal_one_batch_and_follow_predict(
    student: Student, teachers: dict[str, Teacher]
) -> None:
    z = _z(student, 5)
    chunked = decode_z(student, z, "pca,depth,pixels", teachers, batch_size=2)
    whole = decode_z(student, z, "pca,depth,pixels", teachers, batch_size=16)
    for field in ("pca", "depth", "pixels"):
        for key, value in getattr(whole, field).items():
            torch.testing.assert_close(getattr(chunked, field)[key], value, rtol=1e-5, atol=1e-6)
    with torch.inference_mode():
        out = student.predict(z, denormalize=True)
    direct = decode_features(out.features, ["pca", "depth", "pixels"], 64, teachers, pixels=out.pixels)
    torch.testing.assert_close(whole.depth["depth_anything"], direct.depth["depth_anything"])
    torch.testing.assert_close(whole.pixels[PIXEL_HEAD], out.pixels.clamp(0, 1))
    assert whole.frames == 5 and set(whole.pixels) == {PIXEL_HEAD, "mae"}
    assert whole.pca["dinov2"].shape == (5, 7, 7, 3)


def test_one_basis_over_a_rollout_and_identical_frames_identical_colours(student: Student) -> None:
    z = _z(student, 6, seed=1)
    z[4] = z[1]
    decoded = decode_z(student, z, ["pca"])
    # The PCA map is exact per token (test_decode_pca); the student's batched matmuls may differ in
    # the last float bit between batch rows, so identical z give identical colours to float rounding.
    torch.testing.assert_close(decoded.pca["dinov2"][4], decoded.pca["dinov2"][1], rtol=0, atol=1e-5)
    assert not torch.allclose(decoded.pca["dinov2"][2], decoded.pca["dinov2"][1], atol=1e-2)
    with torch.inference_mode():
        patch = student.predict(z, denormalize=True).features["dinov2"].patch
    reference = fit_pca(patch)
    torch.testing.assert_close(decoded.pca_bases["dinov2"].components, reference.components)
    torch.testing.assert_close(decoded.pca["dinov2"], reference.to_rgb(patch))


def test_targets_default_to_what_is_decodable_and_bad_targets_are_errors(
    student: Student, teachers: dict[str, Teacher]
) -> None:
    z = _z(student, 1)
    without_teachers = decode_z(student, z)  # no decoder teachers: PCA and the pixel head only
    assert set(without_teachers.pca) == {"dinov2"} and set(without_teachers.pixels) == {PIXEL_HEAD}
    assert not without_teachers.depth and not without_teachers.masks
    with pytest.raises(
        ValueError, match=r"decoding 'depth' needs the decoder of teacher\(s\) \['depth_anything'\]"
    ):
        decode_z(student, z, "depth")
    with pytest.raises(ValueError, match="unknown decode targets"):
        decode_z(student, z, "pca,normals", teachers)
    with pytest.raises(ValueError, match=r"z must be \[T, 32\]"):
        decode_z(student, z[:, :8], "pca")


def test_compare_mode_shares_basis_and_thresholds(
    student: Student, teachers: dict[str, Teacher], frames: torch.Tensor
) -> None:
    names = ["dinov2", "sam", "depth_anything", "mae"]
    decoders = load_decoder_teachers(student.config.teachers, names, "tiny")
    ours, theirs = decode_images(student, frames, None, decoders, compare=True, mask_settings=SETTINGS)
    assert theirs is not None and ours.frames == theirs.frames == 3
    # The basis is fitted on the teacher's features (the ground truth) and the student is drawn in it.
    assert ours.pca_bases["dinov2"] is theirs.pca_bases["dinov2"]
    teacher_patch = teachers["dinov2"](frames).patch
    torch.testing.assert_close(theirs.pca_bases["dinov2"].components, fit_pca(teacher_patch).components)
    # The teacher row is exactly the teachers' own decoding with the same settings.
    own = decode_features(
        {name: teachers[name](frames) for name in names},
        ["pca", "masks", "depth", "pixels"],
        64,
        teachers,
        mask_settings=SETTINGS,
    )
    torch.testing.assert_close(theirs.pca["dinov2"], own.pca["dinov2"])
    assert torch.equal(theirs.depth["depth_anything"], own.depth["depth_anything"])
    assert [len(m) for m in theirs.masks["sam"]] == [len(m) for m in own.masks["sam"]]
    assert PIXEL_HEAD in ours.pixels and PIXEL_HEAD not in theirs.pixels
    with pytest.raises(ValueError, match="canonical view is 64x64"):
        decode_images(student, frames[:, :, :32, :32], "pca")
    with pytest.raises(ValueError, match="batch_size must be positive, got 0"):
        decode_images(student, frames, "pca", decoders, compare=True, batch_size=0)
