"""z standardised over the batch: the bottleneck's defence against collapsing to a constant.

On frames that share most of their pixels (a static robot scene, a fixed camera) a randomly
initialised ViT's CLS hardly depends on the input: across PushT frames z varied by ~1/140 of its
own size. The decoder then sees a constant, predicts the mean image, and the gradient that would
teach the encoder to tell frames apart is swamped by the part shared by every frame. Batch
normalisation of z (no affine: z is the representation) removes both: each z dimension has zero
mean and unit variance over the batch, and its backward pass keeps only what differs between
samples. Measured on held-out PushT: stuck at the mean image without it, 25.6 dB after 500 steps
with it (docs/decisions.md).

The statistics are summed over every rank (autograd-aware all-reduce), so 2 ranks x B give what
1 process x 2B gives. In eval mode the running statistics are used; ``Student.recalibrate_z``
recomputes them exactly for the current weights (an EMA lags behind a moving encoder: the raw z's
mean is large against its spread, so a few steps of lag put the EMA several spreads off).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from distill.distributed import global_sum, group_size


class ZBatchNorm(nn.Module):
    """Affine-free batch normalisation of z [B, d_z], synchronised across ranks."""

    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(self, dim: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))
        self._calibrating: list[torch.Tensor] | None = None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return (z - self.running_mean) / (self.running_var + self.eps).sqrt()
        # the check reads shapes, not the summed count: reading a GPU value back would stall the
        # host mid-step (and break a compiled graph in two); training ranks hold equal batches
        if z.shape[0] * group_size() < 2:
            raise ValueError(
                "z batch norm needs at least 2 samples per step across all ranks in training mode"
            )
        z32 = z.float()
        count = global_sum(z32.new_full((1,), float(z.shape[0])))  # filled there: no copy to wait on
        mean = global_sum(z32.sum(0)) / count
        var = global_sum((z32 - mean).square().sum(0)) / count
        with torch.no_grad():
            unbiased = var * count / (count - 1)
            if self._calibrating is not None:
                self._calibrating.append(torch.cat([count, mean * count, (var + mean.square()) * count]))
            else:
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(unbiased, self.momentum)
        return ((z32 - mean) / (var + self.eps).sqrt()).to(z.dtype)

    @contextlib.contextmanager
    def recalibrating(self) -> Iterator[None]:
        """Within the block, training-mode forwards only collect statistics; on exit they become the
        running statistics, exactly (a plain average over every sample seen, on every rank)."""
        self._calibrating = []
        try:
            yield
            sums = self._calibrating
        finally:
            self._calibrating = None
        if not sums:
            raise ValueError("recalibrating z batch norm needs at least one training-mode forward")
        total = torch.stack(sums).sum(0)
        count, dim = total[0], self.running_mean.shape[0]
        mean = total[1 : 1 + dim] / count
        second = total[1 + dim :] / count
        with torch.no_grad():
            self.running_mean.copy_(mean)
            self.running_var.copy_((second - mean.square()).clamp_min(0) * count / (count - 1))
