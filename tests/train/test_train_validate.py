"""Validation metrics are sample-weighted means (sums and counts), checked against a direct computation."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F

from distill.data.dataset import Batch
from distill.distributed import DistContext
from distill.features import TeacherOutput
from distill.losses import LossConfig, distillation_loss
from distill.models import Student, StudentConfig
from distill.teachers import load_teacher
from distill.train.validate import evaluate, metric_names


def test_uneven_batches_give_sample_means_not_means_of_means() -> None:
    torch.manual_seed(0)
    spec = load_teacher("dinov2", "tiny", device="cpu").spec
    config = StudentConfig.from_preset("tiny", {"dinov2": spec}, image_size=32, decoder_depth=2)
    student = Student(config, load_pretrained=False).eval()
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    patch, cls = torch.randn(4, *spec.grid, spec.channels), torch.randn(4, spec.cls_channels or 0)
    batches = [
        Batch(
            [f"k{i}" for i in index],
            images[index],
            {"dinov2": TeacherOutput(patch[index], cls[index])},
        )
        for index in ([0, 1, 2], [3])
    ]
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)
    loss_cfg = LossConfig()
    metrics = evaluate(
        student, config, batches, lambda batch, _: batch.targets, loss_cfg, ctx, contextlib.nullcontext
    )
    assert sorted(metrics) == sorted(metric_names(config))

    with torch.no_grad():
        out = student(images)
    cos = F.cosine_similarity(out.features["dinov2"].patch, patch, dim=-1).flatten(1).mean(1)
    assert metrics["dinov2/cos"] == pytest.approx(float(cos.mean()), abs=1e-6)
    assert metrics["dinov2/cls_cos"] == pytest.approx(
        float(F.cosine_similarity(out.features["dinov2"].cls, cls).mean()), abs=1e-6
    )
    assert out.pixels is not None
    mse = (out.pixels.clamp(0, 1) - images.float() / 255).square().flatten(1).mean(1)
    assert metrics["pixels/psnr"] == pytest.approx(float((10 * torch.log10(1 / mse)).mean()), abs=1e-4)
    with torch.no_grad():
        per_batch = [
            distillation_loss(student(b.images), b.targets, b.images, loss_cfg).total for b in batches
        ]
    weighted = (3 * float(per_batch[0]) + float(per_batch[1])) / 4
    assert metrics["loss"] == pytest.approx(weighted, rel=1e-5)
    assert not math.isclose(metrics["loss"], (float(per_batch[0]) + float(per_batch[1])) / 2, rel_tol=1e-4)
