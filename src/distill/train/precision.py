"""Mixed precision: bf16 autocast on GPU by default, full fp32 on CPU (CPU bf16 is slow and lossy)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import partial
from typing import Any

import torch

from distill.train.config import Precision

AutocastFactory = Callable[[], AbstractContextManager[Any]]


def autocast_factory(precision: Precision, device: torch.device) -> AutocastFactory:
    """A zero-argument factory of the autocast context every forward pass runs under."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext
