"""Assertions the teacher tests share."""

from __future__ import annotations

import torch

from distill.teachers import Teacher


def assert_same_teacher(loaded: Teacher, reference: Teacher, images: torch.Tensor) -> None:
    """A teacher loaded back from disk has the reference's spec and bit-identical patch and CLS outputs."""
    assert loaded.spec == reference.spec
    expected, got = reference(images), loaded(images)
    assert torch.equal(got.patch, expected.patch)
    assert (got.cls is None) == (expected.cls is None)
    assert got.cls is None or expected.cls is None or torch.equal(got.cls, expected.cls)
