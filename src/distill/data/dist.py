"""The few torch.distributed calls preprocessing needs (extraction and stats under torchrun).

Control traffic (barriers, flags, stats moments) goes over gloo on CPU tensors, also on GPU
machines: it is a few bytes per shard, and it keeps the code identical on CPU and GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1; otherwise a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    return current()


def current() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def close_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def all_ok(info: DistInfo, ok: bool) -> bool:
    """True on every rank iff ``ok`` on every rank, so one failing rank cannot leave others waiting."""
    if info.world_size == 1:
        return ok
    flag = torch.tensor([1 if ok else 0], dtype=torch.int64)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def all_gather(info: DistInfo, tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's copy of a same-shaped CPU tensor, in rank order."""
    if info.world_size == 1:
        return [tensor]
    parts = [torch.empty_like(tensor) for _ in range(info.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return parts


def default_device(info: DistInfo, device: str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device(f"cuda:{info.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
