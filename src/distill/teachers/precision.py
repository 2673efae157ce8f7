"""The precision teachers run in: bf16 autocast on GPU by default, fp32 on request.

A frozen teacher's forward pass is most of extraction's and online training's GPU time, and
bf16 halves it on tensor-core GPUs while keeping each token's direction (the per-token cosine
to fp32 features is measured by ``tests/teachers/test_precision.py`` and ``benchmarks/gpu.py``).
What autocast keeps in fp32 (norms, softmax, reductions) may use TF32 matmuls under bf16; the
``fp32`` switch turns TF32 off too, for users who want features as the published fp32 model
computes them. Features leave here as float32 whatever the precision, so everything downstream
(quantisation, statistics, losses) sees one dtype. The switch is applied at the call sites
(extraction, online targets) around ``teacher(images)``; no teacher family knows of it. What it
resolved to (``bf16`` or ``fp32``, never ``auto``) is recorded with the features: in the manifest
for stored features, in the stats provenance for both stored and live ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, get_args

import torch

from distill.features import FeaturePrecision, TeacherOutput
from distill.teachers.base import Teacher

TeacherPrecision = Literal["auto", "bf16", "fp32"]
TEACHER_PRECISIONS: tuple[str, ...] = get_args(TeacherPrecision)


def check_precision(value: str) -> TeacherPrecision:
    if value not in TEACHER_PRECISIONS:
        raise ValueError(f"teacher precision must be one of {', '.join(TEACHER_PRECISIONS)}, got {value!r}")
    return value  # type: ignore[return-value]


def uses_bf16(precision: TeacherPrecision, device: torch.device) -> bool:
    """``auto`` is bf16 on CUDA only: CPU bf16 is slower than fp32 on most CPUs."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def resolved_precision(precision: TeacherPrecision, device: torch.device) -> FeaturePrecision:
    """What ``precision`` runs as on ``device``: the value manifests and stats provenance record."""
    return "bf16" if uses_bf16(precision, device) else "fp32"


@contextmanager
def tf32(allowed: bool) -> Iterator[None]:
    """TF32 on or off for float32 matrix products and cuDNN convolutions, restored after (on a GPU,
    cuDNN allows it by default: 10 bits of mantissa where a difference of near-equal values needs 23)."""
    matmul = torch.get_float32_matmul_precision()
    cudnn = torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high" if allowed else "highest")
    torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = cudnn


@contextmanager
def teacher_precision(precision: TeacherPrecision, device: torch.device) -> Iterator[None]:
    """bf16 autocast (TF32 allowed for what stays fp32) or strict fp32 (TF32 off), restored after."""
    bf16 = uses_bf16(precision, device)
    with tf32(bf16):
        if bf16:
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                yield
        else:  # an autocast around the call must not turn "fp32" into bf16
            with torch.autocast(device_type=device.type, enabled=False):
                yield


def run_teacher(teacher: Teacher, images: torch.Tensor, precision: TeacherPrecision) -> TeacherOutput:
    """``teacher(images)`` in ``precision``, features returned as float32."""
    with teacher_precision(precision, teacher.device):
        out = teacher(images)
    return TeacherOutput(out.patch.float(), None if out.cls is None else out.cls.float())
