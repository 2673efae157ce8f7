"""The one distributed layer: torchrun's environment, the process group and the few collectives.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``). The
global rank decides data and logging; the *local* rank picks the GPU, so multi-node runs
(where rank 8 is GPU 0 of the second node) place every process correctly. Without those
variables everything runs as a single process with no process group at all.

Two ways in:

- :func:`init_distributed` (training): nccl when the rank's device is a GPU, gloo on CPU.
- :func:`init_control_group` (extraction, stats): gloo only, also on GPU machines. Preprocessing's
  traffic is control (barriers, flags, stats moments): a few bytes per shard, on CPU tensors, so
  the code is identical on CPU and GPU.

Every collective runs on the group's own device (the rank's GPU for nccl, the CPU for gloo) and
is a no-op returning its input when there is no group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_reduce as all_reduce_autograd

DevicePreference = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: global rank, world size, rank on its node, and its device.

    ``DistContext()`` is a plain single process on the CPU.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None  # None when running as a plain single process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def comm_device(self) -> torch.device:
        """Where collectives run: the rank's GPU under nccl, else the CPU."""
        return self.device if self.backend == "nccl" else torch.device("cpu")


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError as err:
        raise ValueError(
            f"environment variable {name}={value!r} is not an integer (set by torchrun)"
        ) from err


def _pick_device(preference: DevicePreference, local_rank: int) -> torch.device:
    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device={preference!r}: use 'auto', 'cpu' or 'cuda'")
    use_cuda = preference == "cuda" or (preference == "auto" and torch.cuda.is_available())
    if not use_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            "device=cuda but torch.cuda.is_available() is False; use device=cpu or device=auto"
        )
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise RuntimeError(
            f"LOCAL_RANK={local_rank} but this node has {count} GPU(s); "
            "set --nproc_per_node to at most the number of GPUs per node"
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed(preference: DevicePreference = "auto", timeout_s: float = 1800.0) -> DistContext:
    """Join torchrun's process group (nccl on GPU, gloo on CPU), or run alone without torchrun."""
    rank, world_size, local_rank = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    if rank is None and world_size is None:
        return DistContext(0, 1, 0, _pick_device(preference, 0), None)
    if rank is None or world_size is None or local_rank is None:
        raise RuntimeError(
            "incomplete torchrun environment: RANK, WORLD_SIZE and LOCAL_RANK must all be set "
            f"(got RANK={rank}, WORLD_SIZE={world_size}, LOCAL_RANK={local_rank}); launch with torchrun"
        )
    if not 0 <= rank < world_size:
        raise RuntimeError(f"RANK={rank} is outside WORLD_SIZE={world_size}")
    device = _pick_device(preference, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(seconds=timeout_s)}
        if device.type == "cuda":
            kwargs["device_id"] = device
        dist.init_process_group(**kwargs)
    return DistContext(rank, world_size, local_rank, device, backend)


def init_control_group(device: str | None = None) -> DistContext:
    """Join torchrun's process group over gloo when ``WORLD_SIZE`` > 1; otherwise a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    return current(device)


def current(device: str | None = None) -> DistContext:
    """The process group this process is in (none: a single process); ``device`` None picks the
    rank's GPU when there is one, else the CPU."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is not None:
        where = torch.device(device)
    else:
        where = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, where, str(dist.get_backend()))
    return DistContext(device=where)


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if not ctx.distributed:
        return
    if ctx.backend == "nccl":
        dist.barrier(device_ids=[ctx.device.index])
    else:
        dist.barrier()


def all_ok(ctx: DistContext, ok: bool) -> bool:
    """True on every rank iff ``ok`` on every rank, so one failing rank cannot leave others waiting."""
    if not ctx.distributed:
        return ok
    flag = torch.tensor([1 if ok else 0], dtype=torch.int64, device=ctx.comm_device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def group_size() -> int:
    """Ranks in the default process group (1 outside torchrun): for code inside a model, which has no
    DistContext."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def global_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over ranks, on its device and autograd-aware (the gradient is summed
    back): batch statistics inside a model's forward pass."""
    return all_reduce_autograd(tensor) if group_size() > 1 else tensor


def all_reduce_sum(ctx: DistContext, tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over ranks, returned on the CPU."""
    if not ctx.distributed:
        return tensor.cpu()
    work = tensor.to(ctx.comm_device, copy=True)
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.cpu()


def all_gather(ctx: DistContext, tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's copy of a same-shaped tensor, in rank order, on the CPU."""
    if not ctx.distributed:
        return [tensor.cpu()]
    work = tensor.to(ctx.comm_device).contiguous()
    parts = [torch.empty_like(work) for _ in range(ctx.world_size)]
    dist.all_gather(parts, work)
    return [part.cpu() for part in parts]


def broadcast_object(ctx: DistContext, value: Any) -> Any:
    """Rank 0's ``value`` on every rank (run names, resume decisions: things all ranks must agree on)."""
    if not ctx.distributed:
        return value
    holder = [value if ctx.is_main else None]
    dist.broadcast_object_list(holder, src=0, device=ctx.comm_device)
    return holder[0]


def all_gather_object(ctx: DistContext, value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order (used for per-rank RNG states in checkpoints)."""
    if not ctx.distributed:
        return [value]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, value)
    return out
