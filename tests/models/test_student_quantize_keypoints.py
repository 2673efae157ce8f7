"""Discrete z with keypoints: the quantiser codes z's summary, each keypoint coordinate is one code on a
uniform grid over the image, and codes of two vocabularies round-trip, train and save like any other."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from student_fixtures import assert_same_output, images, make_stats, make_student

from distill.codes import CodeLayout
from distill.features import TeacherOutput
from distill.losses import LossConfig, distillation_loss
from distill.models import Student
from distill.models.keypoints import POSITION_SCALE
from distill.models.quantize import FiniteScalarQuantizer, VectorQuantizer, code_layout

# d_z 16 with 2 keypoints: a 12-dimensional summary (3 codes of 4 dimensions) and 4 coordinate codes
KEYPOINTS: dict[str, Any] = {"z_keypoints": 2, "keypoint_sprites": True}
QUANTIZERS: dict[str, dict[str, Any]] = {
    "fsq": {"quantizer": "fsq", "fsq_levels": (4, 3, 3, 2)},  # 3 codes of 72
    "vq": {"quantizer": "vq", "vq_code_dim": 4, "vq_codebook_size": 8},  # 3 codes of 8
}


def _student(kind: str, **overrides: Any) -> Student:
    return make_student(**KEYPOINTS, **QUANTIZERS[kind], **overrides)


def _continuous_z(student: Student, batch: torch.Tensor) -> torch.Tensor:
    """z before the quantiser (what the quantiser is handed)."""
    return student.to_z(student.backbone_tokens(batch), student.grid_of(batch))


def test_the_layout_lists_the_summary_codes_then_one_code_per_coordinate() -> None:
    student = _student("fsq", keypoint_levels=32)
    layout = code_layout(student.config)
    assert layout == CodeLayout((72, 72, 72, 32, 32, 32, 32), (4, 4, 4, 1, 1, 1, 1))
    assert student.quantizer is not None and student.quantizer.layout == layout
    assert (student.quantizer.groups, student.quantizer.vocabulary) == (3, 72)
    assert math.isclose(layout.bits_per_frame, 3 * math.log2(72) + 4 * 5)


@pytest.mark.parametrize("kind", sorted(QUANTIZERS))
def test_codes_round_trip_through_predict_exactly_with_keypoints(kind: str) -> None:
    student = _student(kind)
    batch = images(6)
    with torch.no_grad():
        z = student.encode(batch)
        codes = student.encode(batch, codes=True)
        assert codes.dtype == torch.int64 and codes.shape == (6, 7)
        assert torch.equal(student.codes_to_z(codes), z)  # bit for bit
        assert_same_output(student.predict(codes), student.predict(z), atol=0.0)
        out = student(batch)
        assert student.quantizer is not None
        table = student.quantizer.table()
        student.quantizer.layout.check_table(table)
        assert torch.equal(student.quantizer.layout.lookup(table, codes), z)  # the exported table too
    assert out.codes is not None and torch.equal(out.codes, codes)
    assert torch.equal(out.z, z)
    assert out.pixels is not None  # the sprites are drawn at the quantised points: same pixels as predict
    assert torch.equal(out.pixels, student.predict(z).pixels)  # type: ignore[arg-type]


@pytest.mark.parametrize("levels", [64, 7])
def test_keypoint_coordinates_are_the_centres_of_their_grid_cells(levels: int) -> None:
    student = _student("fsq", keypoint_levels=levels)
    batch = images(16)
    with torch.no_grad():
        continuous = _continuous_z(student, batch).double().numpy()
        z = student.encode(batch).double().numpy()
        codes = student.encode(batch, codes=True).numpy()
    # independently: image position in [0, 1] -> the cell of `levels` equal cells holding it -> its centre
    position = continuous[:, -4:] / math.sqrt(12.0) + 0.5
    cell = np.clip(np.floor(position * levels), 0, levels - 1).astype(np.int64)
    np.testing.assert_array_equal(codes[:, 3:], cell)
    np.testing.assert_allclose(z[:, -4:] / math.sqrt(12.0) + 0.5, (cell + 0.5) / levels, rtol=0, atol=1e-6)
    assert np.abs(z[:, -4:] - continuous[:, -4:]).max() <= POSITION_SCALE / levels / 2 + 1e-6
    # the summary is FSQ's own codes of the first 12 dimensions, untouched by the keypoints
    alone = FiniteScalarQuantizer(12, (4, 3, 3, 2))(torch.from_numpy(continuous[:, :12]).float())
    np.testing.assert_array_equal(codes[:, :3], alone.codes.numpy())
    np.testing.assert_array_equal(z[:, :12], alone.z.double().numpy())
    if levels == 64:  # the default: one level per pixel of the 64 px training view
        assert student.config.image_size == 64


@pytest.mark.parametrize("kind", sorted(QUANTIZERS))
def test_straight_through_gradients_reach_the_backbone_and_the_keypoints(kind: str) -> None:
    student = _student(kind).train()
    batch = images(4)
    output = student(batch)
    targets = {
        name: TeacherOutput(
            torch.randn_like(out.patch), None if out.cls is None else torch.randn_like(out.cls)
        )
        for name, out in output.features.items()
    }
    # no commitment and no sprite search: z reaches the loss only through the quantised values
    loss = distillation_loss(output, targets, batch, LossConfig(commit=0.0, sprite_search=0.0))
    loss.total.backward()
    parameters = dict(student.named_parameters())
    for name in (
        "backbone.embeddings.patch_embeddings.projection.weight",
        "to_z.linear.weight",
        "to_z.keypoints.logits.weight",  # the keypoints' softmax: only through the grid's straight-through
        "to_z.keypoints.offsets.weight",
    ):
        grad = parameters[name].grad
        assert grad is not None and bool(torch.isfinite(grad).all()), name
        assert float(grad.abs().sum()) > 0, name


@pytest.mark.parametrize("kind", sorted(QUANTIZERS))
def test_a_quantised_keypoint_checkpoint_saves_and_loads_strictly(tmp_path: Path, kind: str) -> None:
    student = _student(kind, keypoint_levels=48).train()
    student(images(8))  # a training forward moves the VQ codebook
    student.eval()
    student.save_pretrained(tmp_path / "ckpt", make_stats(student.config))
    loaded = Student.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == student.config and loaded.config.keypoint_levels == 48
    batch = images(3)
    with torch.no_grad():
        assert_same_output(loaded(batch), student(batch), atol=0.0)
        codes = student.encode(batch, codes=True)
        assert torch.equal(loaded.encode(batch, codes=True), codes)
        assert_same_output(loaded.predict(codes), student.predict(codes), atol=0.0)
    if kind == "vq":
        assert isinstance(loaded.quantizer, VectorQuantizer) and isinstance(
            student.quantizer, VectorQuantizer
        )
        assert loaded.quantizer.codebook.shape == (3, 8, 4)  # a codebook for the summary only
        assert torch.equal(loaded.quantizer.codebook, student.quantizer.codebook)


def test_each_code_is_checked_against_its_own_vocabulary() -> None:
    student = _student("vq")
    with torch.no_grad():
        codes = student.encode(images(2), codes=True)
    summary_too_big, coordinate_too_big = codes.clone(), codes.clone()
    summary_too_big[0, 1] = 8  # inside the coordinates' 64 values, outside the codebook's 8
    coordinate_too_big[1, 5] = 64
    with pytest.raises(ValueError, match=r"code 1 must lie in \[0, 8\)"):
        student.predict(summary_too_big)
    with pytest.raises(ValueError, match=r"code 5 must lie in \[0, 64\)"):
        student.codes_to_z(coordinate_too_big)
    codes[:, 3:] = 63  # the last cell of every coordinate is a valid code
    assert torch.isfinite(student.codes_to_z(codes)).all()
