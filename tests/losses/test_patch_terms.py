"""The patch terms' hand-derived gradient against autograd through torch's own cosine and smooth L1."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill.losses import patch_terms


def reference(pred: torch.Tensor, target: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The terms through autograd. The cosine clamps each norm at eps as F.cosine_similarity does, but
    differentiably: F.cosine_similarity clamps in place without grad, so for a prediction shorter than
    eps its backward is not the derivative of its value (elsewhere the two agree)."""
    norms = pred.norm(dim=-1).clamp_min(1e-8) * target.norm(dim=-1).clamp_min(1e-8)
    cosine = (1.0 - (pred * target).sum(-1) / norms).mean()
    return cosine, F.smooth_l1_loss(pred, target, beta=beta)


def awkward_pair(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """[2, 3, 4, 8] grids with a prediction token shorter than eps (its norm is clamped), a zero target
    token, and differences on both sides of beta (the smooth L1's quadratic and linear parts)."""
    generator = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 3, 4, 8, generator=generator, dtype=torch.float64) * 1.5
    target = torch.randn(2, 3, 4, 8, generator=generator, dtype=torch.float64)
    pred[0, 0, 0] *= 1e-10
    target[1, 2, 3] = 0.0
    return pred.to(dtype), target


@pytest.mark.parametrize("beta", [0.25, 1.0, 4.0])
@pytest.mark.parametrize(("weight_cos", "weight_l1"), [(1.0, 1.0), (0.3, 2.0), (0.0, 1.0), (1.0, 0.0)])
def test_values_and_gradients_equal_autograd_through_torch_ops(
    beta: float, weight_cos: float, weight_l1: float
) -> None:
    pred, target = awkward_pair(torch.float64)
    ours = pred.clone().requires_grad_(True)
    theirs = pred.clone().requires_grad_(True)
    got, want = patch_terms(ours, target, beta), reference(theirs, target, beta)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14)
    torch_cosine = (1.0 - F.cosine_similarity(pred, target, dim=-1, eps=1e-8)).mean()
    torch.testing.assert_close(got[0], torch_cosine, rtol=1e-12, atol=1e-14)
    (weight_cos * got[0] + weight_l1 * got[1]).backward()
    (weight_cos * want[0] + weight_l1 * want[1]).backward()
    assert ours.grad is not None and theirs.grad is not None
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-10, atol=1e-14)


def test_gradcheck() -> None:
    """Against finite differences (away from the prediction token shorter than eps, whose clamped norm has a kink)."""
    pred, target = awkward_pair(torch.float64)
    pred = pred[1:, :2].contiguous().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: patch_terms(p, target[1:, :2], 0.5), (pred,))


def test_a_bf16_prediction_is_scored_in_float32() -> None:
    """Under bf16 autocast the heads predict bf16; the terms and the gradient's arithmetic stay float32
    (no rounding of the products or the sums), the gradient comes back in the prediction's dtype."""
    pred, target = awkward_pair(torch.bfloat16)
    target = target.float()
    ours = pred.clone().requires_grad_(True)
    got = patch_terms(ours, target, 1.0)
    assert all(term.dtype == torch.float32 for term in got)
    upcast = pred.float().requires_grad_(True)
    want = reference(upcast, target, 1.0)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)
    (got[0] + got[1]).backward()
    (want[0] + want[1]).backward()
    assert ours.grad is not None and upcast.grad is not None and ours.grad.dtype == torch.bfloat16
    torch.testing.assert_close(ours.grad, upcast.grad.bfloat16())


def test_bad_inputs_are_refused() -> None:
    pred, target = awkward_pair(torch.float32)
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 8\) and target \(2, 3, 4, 7\)"):
        patch_terms(pred, target[..., :7], 1.0)
    with pytest.raises(ValueError, match="target requires grad"):
        patch_terms(pred, target.float().requires_grad_(True), 1.0)
    with pytest.raises(ValueError, match="beta must be > 0"):
        patch_terms(pred, target.float(), 0.0)


def test_the_compiled_terms_are_one_graph_with_the_same_values_and_gradient() -> None:
    """training.compile compiles the patch terms (the compiler then fuses their passes): they must
    trace whole, custom backward included, and give what eager mode gives. The backend traces
    forward and backward with the decompositions inductor uses, without generating its kernels
    (minutes on a CPU)."""
    import torch._dynamo

    pred, target = awkward_pair(torch.bfloat16)
    target = target.float()
    explained = torch._dynamo.explain(lambda p, t: patch_terms(p, t, 0.5))(pred, target)
    assert explained.graph_count == 1 and explained.graph_break_count == 0
    compiled = torch.compile(patch_terms, backend="aot_eager_decomp_partition", fullgraph=True)
    grads = []
    for terms in (patch_terms, compiled):
        leaf = pred.clone().requires_grad_(True)
        cosine, smooth_l1 = terms(leaf, target, 0.5)
        (0.3 * cosine + 2.0 * smooth_l1).backward()
        grads.append((cosine.detach(), smooth_l1.detach(), leaf.grad))
    for eager, traced in zip(*grads, strict=True):
        assert eager is not None and traced is not None
        torch.testing.assert_close(traced, eager, rtol=0, atol=0)
