"""Shared fixtures for the teacher tests. No test here may reach a model hub."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub

import numpy as np
import pytest
import torch

from distill.synthetic import render_scene


def scene_batch(count: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Canonical-view uint8 batch [count, 3, size, size] of deterministic synthetic scenes."""
    arrays = [np.asarray(render_scene(seed + i, (size, size))) for i in range(count)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="session")
def images() -> torch.Tensor:
    """Two 64x64 synthetic scenes as uint8 [2, 3, 64, 64]."""
    return scene_batch()
