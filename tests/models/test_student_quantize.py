"""Discrete z: FSQ and VQ quantisers, codes round trips, straight-through gradients, strict checkpoints."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from student_fixtures import assert_same_output, images, make_config, make_stats, make_student

from distill.codes import CodeLayout
from distill.features import TeacherOutput
from distill.losses import LossConfig, distillation_loss
from distill.models import Student, StudentConfig
from distill.models.quantize import (
    FiniteScalarQuantizer,
    VectorQuantizer,
    code_histogram,
    code_layout,
    summary_layout,
    usage_metrics,
)

QUANTIZERS: dict[str, dict[str, Any]] = {
    "fsq": {"quantizer": "fsq", "fsq_levels": (4, 3)},  # an even and an odd level count; 8 codes of 12
    "vq": {"quantizer": "vq", "vq_code_dim": 4, "vq_codebook_size": 8},  # 4 codes of 8
}


def test_fsq_values_sit_on_the_levels_and_codes_decode_to_them_exactly() -> None:
    fsq = FiniteScalarQuantizer(6, (4, 3))
    z = torch.randn(64, 6) * 3
    out = fsq(z)
    assert out.codes.shape == (64, 3) and out.codes.dtype == torch.int64 and out.commit is None
    assert int(out.codes.min()) >= 0 and int(out.codes.max()) < 12
    grid = {0: torch.tensor([-1, -1 / 3, 1 / 3, 1]), 1: torch.tensor([-1.0, 0.0, 1.0])}
    values = out.z.reshape(64, 3, 2)
    for dim, levels in grid.items():
        assert torch.isclose(values[..., dim, None], levels, atol=1e-6).any(-1).all()
    assert torch.equal(fsq.decode(out.codes), out.z)  # bit for bit, not merely close
    table = fsq.table()
    assert table.shape == (3, 12, 2)
    assert len({tuple(row.tolist()) for row in table[0]}) == 12  # every code its own point


def test_vq_learns_the_means_of_its_assignments_and_restarts_dead_codes() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(2, 2, 4).train()
    first = torch.randn(32, 2) * 0.1 + 5  # every code starts dead: all land on these samples
    vq(first.requires_grad_())
    assert (vq.codebook - 5).abs().max() < 1
    for _ in range(120):  # then the data moves away: codes left unused die and restart on it
        vq((torch.randn(32, 2) * 0.1 - 5).requires_grad_())
    assert (vq.codebook + 5).abs().max() < 1
    assert bool((vq.counts > 0).all())
    # a code converges to the mean of what it is assigned
    lone = VectorQuantizer(2, 2, 1).train()
    for _ in range(200):
        lone(torch.tensor([[1.0, 2.0], [3.0, 4.0]]).repeat(8, 1).requires_grad_())
    torch.testing.assert_close(lone.codebook[0, 0], torch.tensor([2.0, 3.0]), atol=1e-3, rtol=0)


def test_vq_updates_its_fp32_codebook_under_bf16_autocast() -> None:
    """The trainer's GPU forward runs in bf16 autocast; the codebook's running sums stay fp32 (they
    would come out of the einsum in bf16 and fail to update an fp32 buffer)."""
    lone = VectorQuantizer(2, 2, 1).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for _ in range(200):
            lone(torch.tensor([[1.0, 2.0], [3.0, 4.0]]).repeat(8, 1).requires_grad_())
    assert {b.dtype for b in lone.buffers()} == {torch.float32}
    torch.testing.assert_close(lone.codebook[0, 0], torch.tensor([2.0, 3.0]), atol=1e-3, rtol=0)


def test_eval_forwards_leave_the_codebook_alone() -> None:
    vq = VectorQuantizer(4, 2, 8).eval()
    before = {name: b.clone() for name, b in vq.named_buffers()}
    vq(torch.randn(16, 4))
    assert all(torch.equal(before[name], b) for name, b in vq.named_buffers())


@pytest.mark.parametrize("kind", sorted(QUANTIZERS))
def test_codes_round_trip_through_predict_exactly(kind: str) -> None:
    student = make_student(**QUANTIZERS[kind])
    batch = images(4)
    with torch.no_grad():
        z = student.encode(batch)
        codes = student.encode(batch, codes=True)
        layout = code_layout(student.config)
        assert layout is not None and codes.dtype == torch.int64 and codes.shape == (4, layout.codes)
        assert torch.equal(student.codes_to_z(codes), z)
        assert_same_output(student.predict(codes), student.predict(z), atol=0.0)
        out = student(batch)
    assert out.codes is not None and torch.equal(out.codes, codes)
    assert torch.equal(out.z, z)


@pytest.mark.parametrize("kind", sorted(QUANTIZERS))
def test_straight_through_gradients_reach_the_backbone(kind: str) -> None:
    student = make_student(**QUANTIZERS[kind]).train()
    output = student(images(4))
    targets = {
        name: TeacherOutput(
            torch.randn_like(out.patch), None if out.cls is None else torch.randn_like(out.cls)
        )
        for name, out in output.features.items()
    }
    loss = distillation_loss(output, targets, images(4), LossConfig(commit=0.0))  # no commit: through z alone
    loss.total.backward()
    for name in ("backbone.embeddings.patch_embeddings.projection.weight", "to_z.linear.weight"):
        grad = dict(student.named_parameters())[name].grad
        assert grad is not None and bool(torch.isfinite(grad).all()), name
        assert float(grad.abs().sum()) > 0, name


def test_the_commitment_loss_is_a_weighted_term_of_vq_only() -> None:
    for kind, expected in (("vq", True), ("fsq", False)):
        student = make_student(**QUANTIZERS[kind]).train()
        output = student(images(4))
        targets = {name: TeacherOutput(out.patch.detach(), out.cls) for name, out in output.features.items()}
        breakdown = distillation_loss(output, targets, images(4), LossConfig(commit=0.5))
        assert ("quantizer/commit" in breakdown.terms) is expected
        if expected:
            assert output.commit is not None
            assert torch.isclose(breakdown.terms["quantizer/total"], 0.5 * output.commit.detach())


@pytest.mark.parametrize("kind", sorted(QUANTIZERS))
def test_a_quantised_checkpoint_saves_and_loads_strictly(tmp_path: Path, kind: str) -> None:
    student = make_student(**QUANTIZERS[kind]).train()
    student(images(8))  # a training step moves the VQ codebook away from its initial values
    student.eval()
    stats = make_stats(student.config)
    student.save_pretrained(tmp_path / "ckpt", stats)
    loaded = Student.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == student.config
    batch = images(3)
    with torch.no_grad():
        assert_same_output(loaded(batch), student(batch), atol=0.0)
        assert torch.equal(loaded.encode(batch, codes=True), student.encode(batch, codes=True))
    if kind == "vq":  # the codebook is part of the weights: a student without it is refused
        plain = make_student()
        plain.save_pretrained(tmp_path / "plain", stats)
        (tmp_path / "plain" / "model.safetensors").replace(tmp_path / "ckpt" / "model.safetensors")
        with pytest.raises(ValueError, match=r"missing tensors: quantizer\.codebook"):
            Student.from_pretrained(tmp_path / "ckpt")


def test_z_recalibration_does_not_touch_the_codebook() -> None:
    student = make_student(**QUANTIZERS["vq"])
    assert isinstance(student.quantizer, VectorQuantizer)
    before = student.quantizer.codebook.clone()
    student.recalibrate_z([images(8)])
    assert torch.equal(student.quantizer.codebook, before)


def test_config_checks_the_quantiser_and_round_trips() -> None:
    config = make_config(quantizer="fsq", fsq_levels=[8, 5, 5, 5])
    assert config.fsq_levels == (8, 5, 5, 5)
    assert StudentConfig.from_dict(config.to_dict()) == config
    assert code_layout(config) == CodeLayout.uniform(4, 1000, 4)
    assert summary_layout(config) == (4, 1000)
    assert code_layout(make_config()) is None
    with pytest.raises(ValueError, match="16 dimensions\\) is not a multiple of len\\(fsq_levels\\)=3"):
        make_config(quantizer="fsq", fsq_levels=(5, 5, 5))
    with pytest.raises(ValueError, match="levels >= 2"):
        make_config(quantizer="fsq", fsq_levels=(1, 5))
    with pytest.raises(ValueError, match="vq_code_dim=5"):
        make_config(quantizer="vq", vq_code_dim=5)
    with pytest.raises(ValueError, match="quantizer must be one of"):
        make_config(quantizer="lfq")
    with pytest.raises(ValueError, match="no quantiser"):
        make_student().encode(images(1), codes=True)
    fields = {f.name for f in dataclasses.fields(StudentConfig)}
    assert {"quantizer", "fsq_levels", "vq_codebook_size", "vq_code_dim"} <= fields


def test_bad_codes_are_refused() -> None:
    student = make_student(**QUANTIZERS["vq"])
    with pytest.raises(ValueError, match=r"code 0 must lie in \[0, 8\)"):
        student.predict(torch.full((1, 4), 8))
    with pytest.raises(ValueError, match=r"codes must be integers \[B, 4\]"):
        student.codes_to_z(torch.zeros(1, 3, dtype=torch.int64))


def test_usage_metrics() -> None:
    uniform = code_histogram(torch.arange(8)[:, None].repeat(1, 2) % 4, 4)
    assert uniform.shape == (2, 4)
    metrics = usage_metrics(uniform)
    assert math.isclose(metrics["codes/perplexity"], 4.0) and metrics["codes/dead"] == 0.0
    single = usage_metrics(code_histogram(torch.zeros(5, 2, dtype=torch.int64), 4))
    assert math.isclose(single["codes/perplexity"], 1.0) and single["codes/dead"] == 0.75


def test_code_histogram_equals_a_numpy_histogram_per_group() -> None:
    vocabulary, generator = 13, torch.Generator().manual_seed(0)
    codes = torch.stack(  # [B, 3]: every code, only codes 0-2, only the last code
        [
            torch.randint(0, vocabulary, (200,), generator=generator),
            torch.randint(0, 3, (200,), generator=generator),
            torch.full((200,), vocabulary - 1),
        ],
        dim=1,
    ).int()
    histogram = code_histogram(codes, vocabulary)
    bins = np.arange(vocabulary + 1)
    expected = np.stack([np.histogram(codes[:, g].numpy(), bins=bins)[0] for g in range(3)])
    assert histogram.dtype == torch.float64 and histogram.shape == (3, vocabulary)
    np.testing.assert_array_equal(histogram.numpy(), expected)
