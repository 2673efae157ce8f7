"""Shared fixtures for the teacher tests. No test here may reach a model hub."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub

import pytest
import torch
from teacher_helpers import scene_batch


@pytest.fixture(scope="session")
def images() -> torch.Tensor:
    """Two 64x64 synthetic scenes as uint8 [2, 3, 64, 64]."""
    return scene_batch()
