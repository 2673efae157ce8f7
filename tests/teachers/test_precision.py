"""Teachers in bf16 (autocast) against fp32: the per-token cosine of their features, and the fp32 switch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill.teachers import load_teacher
from distill.teachers.precision import check_precision, run_teacher, teacher_precision, uses_bf16

FIVE = ("clip", "dinov2", "mae", "sam", "depth_anything")


def token_cosine(reference: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Cosine of each token's feature vector [..., C] -> [N]."""
    return F.cosine_similarity(reference.flatten(0, -2), other.flatten(0, -2), dim=-1)


@pytest.mark.parametrize("name", FIVE)
def test_bf16_features_keep_each_tokens_direction(name: str, images: torch.Tensor) -> None:
    teacher = load_teacher(name, "tiny", device="cpu")
    exact = teacher(images)
    fp32 = run_teacher(teacher, images, "fp32")
    assert torch.equal(fp32.patch, exact.patch)  # the switch is the teacher as it is
    bf16 = run_teacher(teacher, images, "bf16")
    assert bf16.patch.dtype == torch.float32 and bf16.patch.shape == exact.patch.shape
    assert not torch.equal(bf16.patch, exact.patch)  # autocast did run in bf16
    cosine = token_cosine(exact.patch, bf16.patch)
    assert cosine.mean() > 0.999 and cosine.min() > 0.995, (name, cosine.mean(), cosine.min())
    if exact.cls is not None:
        assert bf16.cls is not None and token_cosine(exact.cls, bf16.cls).min() > 0.995


def test_auto_is_fp32_on_cpu_and_the_global_flags_are_restored(images: torch.Tensor) -> None:
    teacher = load_teacher("dinov2", "tiny", device="cpu")
    assert torch.equal(run_teacher(teacher, images, "auto").patch, teacher(images).patch)
    assert uses_bf16("auto", torch.device("cuda")) and not uses_bf16("auto", torch.device("cpu"))
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    with teacher_precision("bf16", torch.device("cpu")):
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.is_autocast_enabled("cpu")
    with teacher_precision("fp32", torch.device("cpu")):
        assert torch.get_float32_matmul_precision() == "highest"
        assert not torch.backends.cudnn.allow_tf32
    assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == before
    with pytest.raises(ValueError, match="one of auto, bf16, fp32"):
        check_precision("fp16")
