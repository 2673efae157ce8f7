"""Tiny students and teacher specs shared by the model tests (random init, built in milliseconds)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import torch
from transformers import ViTConfig, ViTForImageClassification

from distill.features import TeacherSpec
from distill.models import PRESETS, Student, StudentConfig, StudentOutput
from distill.stats import FeatureStats

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
IMAGE_SIZE = 64  # student grid 4x4 at patch 16


def spec(name: str, grid: tuple[int, int], channels: int, cls_channels: int | None) -> TeacherSpec:
    return TeacherSpec(
        name=name,
        input_size=grid[0] * 14,
        mean=MEAN,
        std=STD,
        grid=grid,
        channels=channels,
        cls_channels=cls_channels,
    )


# Teacher grids bigger (SAM-like 16x16 vs the student's 4x4), equal, smaller and non-square.
TEACHERS = {
    "dinov2": spec("dinov2", (4, 4), 24, 20),
    "sam": spec("sam", (16, 16), 8, None),
    "mae": spec("mae", (2, 2), 12, 12),
    "odd": spec("odd", (3, 5), 6, None),
}


def make_config(**overrides: Any) -> StudentConfig:
    base = StudentConfig.from_preset(
        "tiny", dict(TEACHERS), image_size=IMAGE_SIZE, patch_size=16, d_z=16, decoder_depth=2
    )
    return replace(base, **overrides)


def make_student(seed: int = 0, **overrides: Any) -> Student:
    """A random student; its pixel head (zero at construction, see PixelHead) random too, as once trained."""
    torch.manual_seed(seed)
    student = Student(make_config(**overrides)).eval()
    if student.pixel_head is not None:
        torch.nn.init.normal_(student.pixel_head.linear.weight, std=0.05)
    return student


def make_stats(config: StudentConfig, seed: int = 1) -> dict[str, FeatureStats]:
    gen = torch.Generator().manual_seed(seed)
    stats = {}
    for name, teacher in config.teachers.items():
        cls_mean = cls_std = None
        if teacher.cls_channels is not None:
            cls_mean = torch.randn(teacher.cls_channels, generator=gen)
            cls_std = torch.rand(teacher.cls_channels, generator=gen) + 0.5
        stats[name] = FeatureStats(
            teacher=name,
            patch_mean=torch.randn(teacher.channels, generator=gen),
            patch_std=torch.rand(teacher.channels, generator=gen) + 0.5,
            cls_mean=cls_mean,
            cls_std=cls_std,
            count=100,
        )
    return stats


def images(batch: int = 2, size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE), seed: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, *size), generator=gen, dtype=torch.uint8)


def assert_same_output(a: StudentOutput, b: StudentOutput, atol: float = 1e-5) -> None:
    torch.testing.assert_close(a.z, b.z, rtol=1e-5, atol=atol)
    assert a.features.keys() == b.features.keys()
    for name in a.features:
        torch.testing.assert_close(
            a.features[name].patch, b.features[name].patch, rtol=1e-5, atol=atol, msg=name
        )
        if a.features[name].cls is None:
            assert b.features[name].cls is None
        else:
            torch.testing.assert_close(
                a.features[name].cls, b.features[name].cls, rtol=1e-5, atol=atol, msg=name
            )
    if a.pixels is None:
        assert b.pixels is None
    else:
        torch.testing.assert_close(a.pixels, b.pixels, rtol=1e-5, atol=atol)


def save_deit_like(
    directory: Path, image_size: int = 64, hidden: int | None = None, seed: int = 5
) -> ViTForImageClassification:
    """A tiny ViTForImageClassification saved like facebook/deit-*-patch16-224 (vit.* keys + classifier)."""
    size = PRESETS["tiny"].backbone
    config = ViTConfig(
        hidden_size=hidden or size.width,
        num_hidden_layers=size.depth,
        num_attention_heads=size.heads,
        intermediate_size=size.mlp_dim,
        image_size=image_size,
        patch_size=16,
        **cast(
            dict[str, Any], {"num_labels": 10}
        ),  # a PreTrainedConfig kwarg, absent from ViTConfig's typed signature
    )
    torch.manual_seed(seed)
    model = ViTForImageClassification(config).eval()
    model.save_pretrained(directory)
    return model
