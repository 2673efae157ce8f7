"""distillation_loss: weights, per-teacher totals, gradients, and the errors for mismatched inputs."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from distill.features import TeacherOutput, TeacherSpec
from distill.losses import LossConfig, distillation_loss
from distill.models import Student, StudentConfig, StudentOutput

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
SPECS = {
    "dinov2": TeacherSpec("dinov2", 56, MEAN, STD, (4, 4), 6, 5),
    "sam": TeacherSpec("sam", 64, MEAN, STD, (8, 8), 4, None),
}


def _output(seed: int = 0, batch: int = 2) -> tuple[StudentOutput, dict[str, TeacherOutput], torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    features = {
        name: TeacherOutput(
            rand(batch, *s.grid, s.channels), None if s.cls_channels is None else rand(batch, s.cls_channels)
        )
        for name, s in SPECS.items()
    }
    targets = {
        name: TeacherOutput(
            rand(batch, *s.grid, s.channels), None if s.cls_channels is None else rand(batch, s.cls_channels)
        )
        for name, s in SPECS.items()
    }
    images = torch.randint(0, 256, (batch, 3, 16, 16), generator=gen, dtype=torch.uint8)
    return (
        StudentOutput(z=rand(batch, 8), features=features, pixels=rand(batch, 3, 16, 16) * 0.2 + 0.5),
        targets,
        images,
    )


def _np_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    x, y = a.numpy(), b.numpy()
    return float((1 - (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1))).mean())


def _np_smooth_l1(a: torch.Tensor, b: torch.Tensor, beta: float) -> float:
    d = np.abs(a.numpy() - b.numpy())
    return float(np.where(d < beta, 0.5 * d**2 / beta, d - 0.5 * beta).mean())


def test_total_is_the_weighted_sum_computed_independently() -> None:
    out, targets, images = _output()
    cfg = LossConfig(
        patch_cos=0.7,
        patch_l1=0.3,
        cls_cos=2.0,
        pixel_mse=5.0,
        smooth_l1_beta=0.5,
        teacher_weights={"sam": 3.0},
    )
    result = distillation_loss(out, targets, images, cfg)
    want_terms = {
        "dinov2/patch_cos": _np_cos(out.features["dinov2"].patch, targets["dinov2"].patch),
        "dinov2/patch_l1": _np_smooth_l1(out.features["dinov2"].patch, targets["dinov2"].patch, 0.5),
        "dinov2/cls_cos": _np_cos(out.features["dinov2"].cls, targets["dinov2"].cls),  # type: ignore[arg-type]
        "sam/patch_cos": _np_cos(out.features["sam"].patch, targets["sam"].patch),
        "sam/patch_l1": _np_smooth_l1(out.features["sam"].patch, targets["sam"].patch, 0.5),
        "pixels/mse": float(((out.pixels.numpy() - images.numpy() / 255.0) ** 2).mean()),  # type: ignore[union-attr]
    }
    want_terms["dinov2/total"] = (
        0.7 * want_terms["dinov2/patch_cos"]
        + 0.3 * want_terms["dinov2/patch_l1"]
        + 2.0 * want_terms["dinov2/cls_cos"]
    )
    want_terms["sam/total"] = 3.0 * (0.7 * want_terms["sam/patch_cos"] + 0.3 * want_terms["sam/patch_l1"])
    want_terms["pixels/total"] = 5.0 * want_terms["pixels/mse"]
    assert set(result.terms) == set(want_terms)
    for name, value in want_terms.items():
        assert result.terms[name].item() == pytest.approx(value, rel=1e-5), name
    assert result.total.item() == pytest.approx(
        want_terms["dinov2/total"] + want_terms["sam/total"] + want_terms["pixels/total"], rel=1e-5
    )
    assert result.nonfinite() == []


def test_teacher_weights_scale_only_that_teacher() -> None:
    out, targets, images = _output()
    base = distillation_loss(out, targets, images, LossConfig())
    doubled = distillation_loss(out, targets, images, LossConfig(teacher_weights={"dinov2": 2.0}))
    assert doubled.terms["dinov2/total"].item() == pytest.approx(2 * base.terms["dinov2/total"].item())
    assert doubled.terms["sam/total"].item() == pytest.approx(base.terms["sam/total"].item())
    assert doubled.terms["dinov2/patch_cos"].item() == pytest.approx(base.terms["dinov2/patch_cos"].item())
    assert (doubled.total - base.total).item() == pytest.approx(base.terms["dinov2/total"].item())


def _tiny_student() -> Student:
    torch.manual_seed(0)
    return Student(
        StudentConfig.from_preset("tiny", dict(SPECS), image_size=32, patch_size=16, d_z=8, decoder_depth=2)
    )


def test_a_zero_weight_teacher_gets_no_gradient_and_the_others_do() -> None:
    student = _tiny_student()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    out = student(images)
    targets = {
        name: TeacherOutput(torch.randn_like(f.patch), None if f.cls is None else torch.randn_like(f.cls))
        for name, f in out.features.items()
    }
    distillation_loss(out, targets, images, LossConfig(teacher_weights={"sam": 0.0})).total.backward()
    assert all(p.grad is None for p in student.heads["sam"].parameters())
    for p in student.heads["dinov2"].parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert student.backbone.embeddings.cls_token.grad is not None


def test_a_nan_teacher_is_named_and_a_zero_weight_one_cannot_poison_the_total() -> None:
    out, targets, images = _output()
    targets["sam"].patch[0, 0, 0, 0] = float("nan")
    result = distillation_loss(out, targets, images, LossConfig())
    assert result.nonfinite() == ["sam/total"]
    assert not torch.isfinite(result.total)
    muted = distillation_loss(out, targets, images, LossConfig(teacher_weights={"sam": 0.0}))
    assert torch.isfinite(muted.total) and muted.nonfinite() == []
    assert torch.isnan(muted.terms["sam/patch_l1"])  # still reported for logging


def test_missing_targets_fail_naming_the_teacher() -> None:
    out, targets, images = _output()
    del targets["sam"]
    with pytest.raises(ValueError, match=r"no targets for teacher\(s\) \['sam'\]"):
        distillation_loss(out, targets, images, LossConfig())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.update(clip=t["sam"]), r"targets for \['clip'\], which the student does not predict"),
        (
            lambda t: t.update(sam=TeacherOutput(t["sam"].patch[:, :4], None)),
            r"teacher 'sam': predicted patch features \(2, 8, 8, 4\) but targets are \(2, 4, 8, 4\)",
        ),
        (
            lambda t: t.update(dinov2=TeacherOutput(t["dinov2"].patch, None)),
            r"teacher 'dinov2': the student predicts a CLS but the targets have none",
        ),
        (
            lambda t: t.update(sam=TeacherOutput(t["sam"].patch, torch.zeros(2, 3))),
            r"teacher 'sam': the student has CLS targets",
        ),
    ],
)
def test_mismatched_targets_are_refused_naming_the_teacher(edit: object, message: str) -> None:
    out, targets, images = _output()
    edit(targets)  # type: ignore[operator]
    with pytest.raises(ValueError, match=message):
        distillation_loss(out, targets, images, LossConfig())


def test_config_errors_are_named() -> None:
    out, targets, images = _output()
    with pytest.raises(ValueError, match=r"teacher_weights names \['dino'\]"):
        distillation_loss(out, targets, images, LossConfig(teacher_weights={"dino": 1.0}))
    with pytest.raises(ValueError, match=r"teacher_weights\['sam'\] must be finite and >= 0"):
        LossConfig(teacher_weights={"sam": -1.0})
    with pytest.raises(ValueError, match="needs the images"):
        distillation_loss(out, targets, None, LossConfig())
    with pytest.raises(ValueError, match="nothing to train"):
        distillation_loss(out, targets, images, LossConfig(patch_cos=0, patch_l1=0, cls_cos=0, pixel_mse=0))


def test_pixel_weight_zero_needs_no_images_and_removes_the_term() -> None:
    out, targets, _ = _output()
    result = distillation_loss(out, targets, None, LossConfig(pixel_mse=0.0))
    assert "pixels/mse" not in result.terms
    no_pixels = replace(out, pixels=None)
    assert distillation_loss(no_pixels, targets, None, LossConfig()).total.item() == pytest.approx(
        result.total.item()
    )
