"""The two patch terms of one teacher, per-token cosine distance and per-element smooth L1, with a
hand-derived gradient.

Written as autograd composes them, the terms take about thirty passes over the patch grid between
forward and backward (a float32 copy of the prediction, products, norms, clamps, and the backward of
each), and every pass is memory-bound: at batch 256 the five real teachers' grids hold 556 M values,
SAM's 64x64 alone 268 M. Here the forward takes the two norms, one product and its sum, and
smooth L1's sum; the backward three elementwise passes (smooth L1's own backward kernel, then the
cosine's two terms, the last writing the prediction's dtype), with no float32 copy of the prediction
made or kept for the backward on a GPU: 56 bytes moved per value between operators where autograd's
composition moves 180 (bf16 prediction, float32 target; smooth L1's sum also makes a float32
temporary inside its kernel, in both, and a CPU converts a bf16 prediction to float32 inside the
mixed-dtype kernels).

The values are those of ``1 - F.cosine_similarity(pred, target, dim=-1, eps).mean()`` and
``F.smooth_l1_loss(pred, target, beta)``, computed in float32 (float64 for float64 inputs) whatever
the prediction's dtype; so is the gradient, which is the values' derivative everywhere (for a
prediction shorter than ``eps``, F.cosine_similarity's own backward is not: it clamps without grad).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

_MEAN = 1  # at::Reduction::Mean, the reduction argument of aten's loss kernels


# what distillation_loss calls for each teacher: patch_terms, or patch_terms under torch.compile
PatchTerms = Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]


def patch_terms(
    pred: torch.Tensor, target: torch.Tensor, beta: float, eps: float = 1e-8
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean per-token cosine distance, mean per-element smooth L1) of ``pred`` against ``target``,
    both [..., C] with channels last; float32 scalars (float64 for float64 inputs). The target gets
    no gradient: it is a teacher's."""
    if pred.shape != target.shape:
        raise ValueError(
            f"patch_terms: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ"
        )
    if target.requires_grad:
        raise ValueError("patch_terms: the target requires grad, but teacher features are fixed targets")
    if not beta > 0:
        raise ValueError(f"patch_terms: smooth L1 beta must be > 0, got {beta}")
    cosine, smooth_l1 = _PatchTerms.apply(pred, target, beta, eps)
    return cosine, smooth_l1


class _PatchTerms(torch.autograd.Function):
    """Forward: per-token dot product and both norms, and the smooth L1 sum. Backward, with the
    incoming scalar gradients ``g_cos`` and ``g_l1`` folded into per-token coefficients::

        d/dp = a * t + b * p + g_l1 / (beta * N) * clamp(p - t, -beta, beta)
        a = -g_cos / (T * |p|' * |t|'),  b = g_cos * cos / (T * |p|^2)  (0 where |p| <= eps)

    with |x|' = max(|x|, eps) (F.cosine_similarity clamps each norm), T tokens and N elements."""

    @staticmethod
    def forward(
        ctx: Any, pred: torch.Tensor, target: torch.Tensor, beta: float, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        exact = torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)
        target = target.to(exact)  # a copy only for a low-precision target: the products below are then exact
        pred_norm = torch.linalg.vector_norm(pred, dim=-1, dtype=exact)
        target_norm = torch.linalg.vector_norm(target, dim=-1)
        inverse_pred = pred_norm.clamp_min(eps).reciprocal()
        inverse_both = inverse_pred * target_norm.clamp_min(eps).reciprocal()
        cosine = (pred * target).sum(-1) * inverse_both
        smooth_l1 = F.smooth_l1_loss(pred, target, beta=beta, reduction="sum")
        ctx.save_for_backward(pred, target, cosine, inverse_pred, inverse_both, pred_norm > eps)
        ctx.beta = beta
        return 1.0 - cosine.mean(), smooth_l1 / pred.numel()

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_cosine: torch.Tensor, grad_l1: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        pred, target, cosine, inverse_pred, inverse_both, pred_long = ctx.saved_tensors
        tokens = cosine.numel()
        to_target = (-grad_cosine / tokens * inverse_both).unsqueeze(-1)
        to_pred = (grad_cosine / tokens * cosine * inverse_pred.square() * pred_long).unsqueeze(-1)
        # smooth L1's own backward kernel, in one pass: called with the target first, so that it computes
        # in the target's dtype (float32), the sign folded into the incoming gradient; the grad_input form
        # writes into an empty tensor (the plain form zero-fills its output first: a pass for nothing)
        grad = torch.empty_like(target)
        torch.ops.aten.smooth_l1_loss_backward.grad_input(
            -grad_l1, target, pred, _MEAN, ctx.beta, grad_input=grad
        )
        grad.addcmul_(target, to_target)
        # the last pass computes in float32 and writes the prediction's dtype: no separate cast
        return torch.addcmul(grad, pred, to_pred, out=torch.empty_like(pred)), None, None, None
