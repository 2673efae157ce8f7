"""Validation: per-teacher cosine and loss, pixel PSNR, averaged over every sample of the val split,
and with a quantiser the codebook use over the whole split (``codes/perplexity``, ``codes/dead``).

Each rank sums per-sample values over its share of the split; one all-reduce of the sums and the
sample count gives exact means over the whole split (a mean of per-rank means would weigh ranks
with fewer samples too much).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill.data.dataset import Batch
from distill.distributed import DistContext, all_reduce_sum
from distill.features import TeacherOutput
from distill.losses import LossConfig, distillation_loss
from distill.models.config import StudentConfig
from distill.models.quantize import code_histogram, summary_layout, usage_metrics
from distill.train.teacher_source import TeacherEncoderConfig

TargetFn = Callable[[Batch, torch.Tensor], dict[str, TeacherOutput]]  # (batch, images on device) -> targets


def metric_names(config: StudentConfig | TeacherEncoderConfig) -> list[str]:
    """The fixed list of validation metrics, identical on every rank (even one with no val samples)."""
    names = ["loss"]
    for teacher, spec in sorted(config.teachers.items()):
        names += [f"{teacher}/cos", f"{teacher}/loss"]
        if spec.cls_channels is not None:
            names.append(f"{teacher}/cls_cos")
    if config.pixel_head:
        names += ["pixels/psnr", "pixels/mse"]
    return names


def per_sample_cosine(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over tokens, per sample: [B, ..., C] -> [B]."""
    cos = F.cosine_similarity(pred.float(), target.float(), dim=-1)
    return cos.reshape(cos.shape[0], -1).mean(1)


def per_sample_psnr(pixels: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of predictions clamped to [0, 1] against the uint8 images, per sample."""
    target = images.to(pixels.device).float() / 255.0
    mse = (pixels.float().clamp(0, 1) - target).square().reshape(pixels.shape[0], -1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    config: StudentConfig | TeacherEncoderConfig,
    batches: Iterable[Batch],
    targets_of: TargetFn,
    loss_cfg: LossConfig,
    ctx: DistContext,
    autocast: Callable[[], AbstractContextManager[Any]],
) -> dict[str, float]:
    """Mean of every metric in :func:`metric_names` over the samples all ranks saw together."""
    names = metric_names(config)
    index = {name: i for i, name in enumerate(names)}
    sums = torch.zeros(len(names) + 1, dtype=torch.float64)
    layout = summary_layout(config) if isinstance(config, StudentConfig) else None  # the summary's use
    codes = None if layout is None else torch.zeros(layout, dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            images = batch.images.to(ctx.device, non_blocking=True)
            targets = targets_of(batch, images)
            with autocast():
                output = model(images)
            breakdown = distillation_loss(output, targets, images, loss_cfg)
            size = images.shape[0]
            add = {"loss": breakdown.total.detach().float() * size}
            for teacher in config.teachers:
                pred, target = output.features[teacher], targets[teacher]
                add[f"{teacher}/cos"] = per_sample_cosine(
                    pred.patch, target.patch.to(pred.patch.device)
                ).sum()
                add[f"{teacher}/loss"] = breakdown.terms[f"{teacher}/total"].float() * size
                if pred.cls is not None and target.cls is not None:
                    add[f"{teacher}/cls_cos"] = per_sample_cosine(
                        pred.cls, target.cls.to(pred.cls.device)
                    ).sum()
            if output.pixels is not None:
                add["pixels/psnr"] = per_sample_psnr(output.pixels, images).sum()
                add["pixels/mse"] = breakdown.terms["pixels/mse"].float() * size
            for name, value in add.items():
                sums[index[name]] += float(value)
            if codes is not None and output.codes is not None:
                codes += code_histogram(output.codes[:, : codes.shape[0]], codes.shape[1]).cpu()
            sums[-1] += size
    finally:
        model.train(was_training)
    sums = all_reduce_sum(ctx, sums)
    count = float(sums[-1])
    if count == 0:
        raise RuntimeError("the validation split gave no samples on any rank; check dataset.val_split")
    metrics = {name: float(sums[i]) / count for name, i in index.items()}
    if codes is not None:
        metrics |= usage_metrics(all_reduce_sum(ctx, codes))
    return metrics
