"""Inputs and assertions the teacher tests share."""

from __future__ import annotations

import numpy as np
import torch

from distill.synthetic import render_scene
from distill.teachers import Teacher


def scene_batch(count: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Canonical-view uint8 batch [count, 3, size, size] of deterministic synthetic scenes."""
    arrays = [np.asarray(render_scene(seed + i, (size, size))) for i in range(count)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def assert_same_teacher(loaded: Teacher, reference: Teacher, images: torch.Tensor) -> None:
    """A teacher loaded back from disk has the reference's spec and bit-identical patch and CLS outputs."""
    assert loaded.spec == reference.spec
    expected, got = reference(images), loaded(images)
    assert torch.equal(got.patch, expected.patch)
    assert (got.cls is None) == (expected.cls is None)
    assert got.cls is None or expected.cls is None or torch.equal(got.cls, expected.cls)
