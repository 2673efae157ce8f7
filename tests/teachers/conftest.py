"""Shared fixtures for the teacher tests. No test here may reach a model hub."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub

import pytest
import torch
from teacher_helpers import scene_batch

from distill.teachers import load_teacher
from distill.teachers.vjepa2 import VJepa2Teacher


@pytest.fixture(scope="session")
def images() -> torch.Tensor:
    """Two 64x64 synthetic scenes as uint8 [2, 3, 64, 64]."""
    return scene_batch()


@pytest.fixture(scope="session")
def vjepa2() -> VJepa2Teacher:
    """The tiny V-JEPA 2 teacher on the CPU."""
    teacher = load_teacher("vjepa2", device="cpu")
    assert isinstance(teacher, VJepa2Teacher)
    return teacher
