"""z batch norm: standardised z in training, saved statistics at inference, exact recalibration."""

from __future__ import annotations

import pytest
import torch
from student_fixtures import IMAGE_SIZE, images, make_student

from distill.models.decoder import ZProjection
from distill.models.znorm import ZBatchNorm


def test_training_mode_standardises_each_dimension_over_the_batch() -> None:
    torch.manual_seed(0)
    z = torch.randn(64, 5) * torch.tensor([0.05, 1.0, 10.0, 0.1, 3.0]) + torch.tensor(
        [0.5, -2.0, 7.0, 0.0, 1.0]
    )
    out = ZBatchNorm(5).train()(z)
    torch.testing.assert_close(out.mean(0), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        out.var(0, unbiased=False), torch.ones(5), atol=1e-2, rtol=0
    )  # eps shows at 0.05


@pytest.mark.parametrize("z_norm", ["batch", "none"])
def test_z_is_projected_in_fp32_under_bf16_autocast(z_norm: str) -> None:
    """The trainer runs bf16 autocast on a GPU. Frames of a static scene give CLS tokens that differ by
    ~1% of their size; a bf16 projection rounds z by ~0.4% of it, which would drown those differences."""
    torch.manual_seed(0)
    projection = ZProjection(32, 8, z_norm).train()  # type: ignore[arg-type]
    shared = torch.randn(1, 5, 32) * 10
    tokens = shared + 0.1 * torch.randn(16, 5, 32)  # what tells the 16 frames apart: 1% of the token
    want = projection(tokens, (2, 2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = projection(tokens, (2, 2))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_backward_removes_what_every_sample_shares() -> None:
    """A loss that only moves all z's together gives the encoder no gradient at all."""
    z = torch.randn(16, 3, requires_grad=True)
    ZBatchNorm(3).train()(z).sum().backward()
    assert z.grad is not None
    torch.testing.assert_close(z.grad, torch.zeros_like(z.grad), atol=1e-6, rtol=0)


def test_eval_mode_uses_running_statistics_and_needs_no_batch() -> None:
    norm = ZBatchNorm(2).eval()
    norm.running_mean.copy_(torch.tensor([1.0, -1.0]))
    norm.running_var.copy_(torch.tensor([4.0, 0.25]))
    out = norm(torch.tensor([[3.0, 0.0]]))
    torch.testing.assert_close(out, torch.tensor([[1.0, 2.0]]), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="at least 2 samples"):
        norm.train()(torch.zeros(1, 2))


def test_student_recalibration_gives_the_exact_statistics_of_its_z() -> None:
    student = make_student()
    batches = [images(5, seed=s) for s in range(3)]
    assert student.recalibrate_z(batches) == 15
    norm = student.to_z.z_norm
    assert norm is not None and not student.training
    raw = torch.cat(
        [student.to_z.linear(student.to_z.norm(student.backbone_tokens(b)[:, 0])) for b in batches]
    )
    torch.testing.assert_close(norm.running_mean, raw.mean(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(norm.running_var, raw.var(0), atol=1e-6, rtol=1e-3)
    z = student.encode(torch.cat(batches))  # eval mode: z over these images has mean 0 and variance 1
    torch.testing.assert_close(z.mean(0), torch.zeros(z.shape[1]), atol=1e-3, rtol=0)
    assert images(1).shape[-1] == IMAGE_SIZE and student.encode(images(1)).shape == (1, student.config.d_z)
