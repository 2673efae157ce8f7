"""Capture and restore every random generator a rank uses (python, numpy, torch CPU and CUDA).

States are kept as tensors plus JSON-able values so a checkpoint stores them with safetensors
and JSON, never pickle.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class RngState:
    """One rank's generator states."""

    torch_cpu: torch.Tensor  # uint8, torch.get_rng_state()
    torch_cuda: torch.Tensor | None  # uint8, this process's current CUDA device
    numpy_keys: torch.Tensor  # int64 [624] (MT19937 key, stored widened)
    numpy_meta: dict[str, Any]  # pos, has_gauss, cached_gaussian
    python: list[Any]  # random.getstate() as JSON: [version, [625 ints], gauss_next]

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {f"{prefix}.torch_cpu": self.torch_cpu, f"{prefix}.numpy_keys": self.numpy_keys}
        if self.torch_cuda is not None:
            out[f"{prefix}.torch_cuda"] = self.torch_cuda
        return out

    def meta(self) -> dict[str, Any]:
        return {"numpy": self.numpy_meta, "python": self.python}

    @classmethod
    def from_parts(cls, prefix: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> RngState:
        return cls(
            torch_cpu=tensors[f"{prefix}.torch_cpu"],
            torch_cuda=tensors.get(f"{prefix}.torch_cuda"),
            numpy_keys=tensors[f"{prefix}.numpy_keys"],
            numpy_meta=dict(meta["numpy"]),
            python=list(meta["python"]),
        )


def capture() -> RngState:
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    if kind != "MT19937":
        raise RuntimeError(f"unexpected numpy generator {kind!r}")
    version, internal, gauss_next = random.getstate()
    return RngState(
        torch_cpu=torch.get_rng_state().clone(),
        torch_cuda=torch.cuda.get_rng_state().clone() if torch.cuda.is_available() else None,
        numpy_keys=torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
        numpy_meta={"pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        python=[version, list(internal), gauss_next],
    )


def restore(state: RngState) -> None:
    torch.set_rng_state(state.torch_cpu.to(torch.uint8))
    if state.torch_cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state.torch_cuda.to(torch.uint8))
    meta = state.numpy_meta
    keys = state.numpy_keys.numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, meta["pos"], meta["has_gauss"], meta["cached_gaussian"]))
    version, internal, gauss_next = state.python
    random.setstate((version, tuple(internal), gauss_next))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
