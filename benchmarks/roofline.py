"""What one training step must cost on a GPU, counted on any machine: FLOPs and bytes per operator.

    python benchmarks/roofline.py                  # deit_small, deit_base, batch 256, H200 -> results/roofline.json
    python benchmarks/roofline.py --device-name "NVIDIA H100 80GB HBM3"

Every operator of the step runs under a dispatch mode that counts its FLOPs (torch's own formulas,
those of FlopCounterMode) and its bytes (its tensor inputs and outputs: what a kernel reads and writes
when nothing is fused, as in eager mode). Each operator then takes at least ``max(FLOPs / peak,
bytes / bandwidth)`` on a GPU, and their sum is the floor of an eager step: no eager implementation of
this step can beat it, so ``counted FLOPs / (floor x peak)`` is the highest MFU eager mode can reach,
and the floor's memory-bound share says how much of it only fusion (a compiler, or fewer passes
written by hand) can remove. The step runs with the five real-size heads and teachers' grids, in
bf16 autocast, at two small batches; each operator's count is linear in the batch, so the counts
are extrapolated to ``--batch``. Two limits: what an operator does inside its kernel is not seen
(smooth L1's sum makes a temporary; on a CPU, a mixed-dtype kernel converts its inputs first), and a
CPU's autocast keeps layer norms and reductions in bf16 where CUDA's runs them in float32 and casts
after, so on a GPU the step moves somewhat more (gpu.py counts there). The optimiser and gradient clipping are counted from the parameter
count (fused AdamW and foreach clipping: 40 bytes per parameter, no FLOPs to speak of).

Parts: the student's forward per top-level module (``backbone``, ``heads.<teacher>``, ...), the loss
forward, the loss backward (down to the predictions) and the student's backward.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count
from torch.utils.module_tracker import ModuleTracker

from common import FIVE, base_parser, machine, write_result
from distill.features import TeacherOutput, TeacherSpec
from distill.losses import LossConfig, distillation_loss
from distill.models import Student, StudentConfig

# Dense bf16 tensor-core peak (TFLOP/s, no sparsity) and memory bandwidth (TB/s) from the vendors' data
# sheets, matched in order against the device name (torch.cuda.get_device_name's).
DEVICES: tuple[tuple[tuple[str, ...], float, float], ...] = (
    (("GB200",), 2500.0, 8.0),
    (("B200",), 2250.0, 8.0),
    (("H200", "NVL"), 835.5, 4.8),
    (("H200",), 989.4, 4.8),
    (("H100", "PCIe"), 756.0, 2.0),
    (("H100", "NVL"), 835.0, 3.9),
    (("H100",), 989.4, 3.35),
    (("H800",), 989.4, 3.35),
    (("GH200",), 989.4, 4.0),
    (("A100",), 312.0, 2.0),
    (("A800",), 312.0, 2.0),
    (("L40S",), 362.1, 0.864),
    (("L40",), 181.0, 0.864),
    (("L4",), 121.0, 0.3),
    (("A10",), 125.0, 0.6),
)
OPTIMIZER_BYTES_PER_PARAMETER = (
    40  # AdamW reads param, grad, 2 moments and writes 3; clipping reads + scales grads
)
NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "lift_fresh", "detach", "_unsafe_view", "_reshape_alias"}  # fmt: skip


def device_figures(name: str) -> tuple[float, float] | None:
    """(peak bf16 TFLOP/s, bandwidth TB/s) of a device by name; None when it is not in the table."""
    return next(
        ((peak, bandwidth) for keys, peak, bandwidth in DEVICES if all(k in name for k in keys)), None
    )


@dataclass(frozen=True)
class OpCost:
    part: str
    op: str
    flops: float
    bytes: float

    def seconds(self, peak_flops: float, bandwidth: float) -> float:
        return max(self.flops / peak_flops, self.bytes / bandwidth)


class CostCounter(TorchDispatchMode):
    """Records every operator that runs a kernel: its part (``part``, refined by the module running it
    in a forward pass), FLOPs and bytes."""

    def __init__(self, tracker: ModuleTracker) -> None:
        super().__init__()
        self.tracker, self.part, self.ops = tracker, "", list[OpCost]()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func.overloadpacket
        if func.is_view or packet.__name__ in NO_KERNEL:
            return out
        read = _read_tensors(func, args, kwargs)
        written = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if not read and not written:  # a query such as promote_types: no kernel
            return out
        moved = sum(t.numel() * t.element_size() for t in (*read, *written))
        formula = flop_registry.get(packet) or CPU_FLOP_FORMULAS.get(packet)
        flops = formula(*args, **kwargs, out_val=out) if formula is not None else 0
        self.ops.append(OpCost(self._where(), packet.__name__, float(flops), float(moved)))
        return out

    def _where(self) -> str:
        if self.part != "student forward":
            return self.part
        inner = max((p for p in self.tracker.parents if p.startswith("Student.")), key=len, default="Student")
        names = inner.split(".")[1:]
        return "student forward: " + (
            ".".join(names[:2]) if names[:1] == ["heads"] else names[0] if names else "(own)"
        )


WRITE_ONLY_SELF = {torch.ops.aten.copy_, torch.ops.aten.zero_, torch.ops.aten.fill_}


def _read_tensors(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[torch.Tensor]:
    """The tensors an operator reads: its arguments but ``out=`` destinations and the self of
    ``copy_``, ``zero_`` and ``fill_``, which they only write (another in-place operator's self is
    read and written: counted as both)."""
    written_only = {
        a.name
        for a in func._schema.arguments
        if a.kwarg_only and a.alias_info is not None and a.alias_info.is_write
    }
    kept = {key: value for key, value in kwargs.items() if key not in written_only}
    positional = args[1:] if func.overloadpacket in WRITE_ONLY_SELF else args
    return [t for t in tree_leaves((positional, kept)) if isinstance(t, torch.Tensor)]


def _cpu_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *_: Any, **__: Any) -> int:
    return int(sdpa_flop_count(query.shape, key.shape, value.shape))


def _cpu_attention_backward(
    grad: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *_: Any, **__: Any
) -> int:
    return int(sdpa_backward_flop_count(grad.shape, query.shape, key.shape, value.shape))


# torch's table covers the CUDA attention kernels; SDPA on a CPU runs these, with the same FLOPs
CPU_FLOP_FORMULAS: dict[Any, Callable[..., int]] = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward,
}


def _cut(value: Any, cuts: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """``value`` (a nested model output) with each tensor that carries a graph replaced by a new leaf,
    (original, leaf) appended to ``cuts``: the loss's backward then stops at the predictions."""
    if isinstance(value, torch.Tensor) and value.requires_grad:
        leaf = value.detach().requires_grad_(True)
        cuts.append((value, leaf))
        return leaf
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _cut(getattr(value, f.name), cuts) for f in dataclasses.fields(value)}
        return dataclasses.replace(value, **fields)
    if isinstance(value, dict):
        return {key: _cut(item, cuts) for key, item in value.items()}
    return value


def count_step(student: Student, images: torch.Tensor, targets: dict[str, TeacherOutput]) -> list[OpCost]:
    """The operators of one forward + loss + backward, each tagged with its part (bf16 autocast)."""
    with ModuleTracker() as tracker, CostCounter(tracker) as counter:
        counter.part = "student forward"
        with torch.autocast(images.device.type, dtype=torch.bfloat16):
            output = student(images)
        cuts: list[tuple[torch.Tensor, torch.Tensor]] = []
        predictions = _cut(output, cuts)
        counter.part = "loss forward"
        total = distillation_loss(predictions, targets, images, LossConfig()).total
        counter.part = "loss backward"
        total.backward()
        used = [(original, leaf.grad) for original, leaf in cuts if leaf.grad is not None]
        counter.part = "student backward"
        torch.autograd.backward([original for original, _ in used], [grad for _, grad in used])
    student.zero_grad(set_to_none=True)
    return counter.ops


def extrapolated(
    small: list[OpCost], large: list[OpCost], batches: tuple[int, int], batch: int
) -> list[OpCost]:
    """Each operator's counts at ``batch`` from two runs at ``batches`` (the same operators, in order)."""
    if [(o.part, o.op) for o in small] != [(o.part, o.op) for o in large]:
        raise RuntimeError(
            "the step ran different operators at the two batch sizes; counts cannot be extrapolated"
        )
    (b0, b1), out = batches, []
    for a, b in zip(small, large, strict=True):

        def at(x: float, y: float) -> float:
            return x + (y - x) / (b1 - b0) * (batch - b0)

        out.append(OpCost(a.part, a.op, at(a.flops, b.flops), at(a.bytes, b.bytes)))
    return out


def summary(
    ops: list[OpCost], parameters: int, peak_tflops: float, bandwidth_tbs: float, top: int = 12
) -> dict[str, Any]:
    peak, bandwidth = peak_tflops * 1e12, bandwidth_tbs * 1e12
    optimizer = OpCost(
        "optimizer + clipping", "fused AdamW, foreach clip", 0.0, OPTIMIZER_BYTES_PER_PARAMETER * parameters
    )
    ops = [*ops, optimizer]
    # per part: FLOPs, bytes, floor seconds, memory-bound seconds; per (part, operator): seconds, bytes, calls
    parts: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    by_op: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for op in ops:
        seconds = op.seconds(peak, bandwidth)
        memory_bound = op.bytes / bandwidth > op.flops / peak
        row = parts[op.part]
        row[0] += op.flops
        row[1] += op.bytes
        row[2] += seconds
        row[3] += seconds if memory_bound else 0.0
        row = by_op[(op.part, op.op)]
        row[0] += seconds
        row[1] += op.bytes
        row[2] += 1
    floor = sum(row[2] for row in parts.values())
    memory_bound_floor = sum(row[3] for row in parts.values())
    flops = sum(op.flops for op in ops)
    return {
        "tflops_per_step": round(flops / 1e12, 3),
        "gb_moved_per_step": round(sum(op.bytes for op in ops) / 1e9, 1),
        "kernels_per_step": len(ops),
        "floor_ms": round(floor * 1e3, 2),
        "compute_only_ms": round(flops / peak * 1e3, 2),
        "memory_bound_share_of_floor": round(memory_bound_floor / floor, 3),
        "eager_mfu_ceiling": round(flops / (floor * peak), 3),
        "parts": {
            part: {
                "tflops": round(row[0] / 1e12, 3),
                "gb_moved": round(row[1] / 1e9, 2),
                "floor_ms": round(row[2] * 1e3, 2),
                "memory_bound_ms": round(row[3] * 1e3, 2),
            }
            for part, row in sorted(parts.items(), key=lambda kv: -kv[1][2])
        },
        "top_ops": [
            {
                "part": part,
                "op": op,
                "floor_ms": round(row[0] * 1e3, 2),
                "gb_moved": round(row[1] / 1e9, 2),
                "calls": int(row[2]),
            }
            for (part, op), row in sorted(by_op.items(), key=lambda kv: -kv[1][0])[:top]
        ],
    }


def build_student(size: str, specs: dict[str, TeacherSpec], image_size: int, device: torch.device) -> Student:
    """The ``size`` preset with heads for ``specs``, random weights (seed 0), in training mode."""
    torch.manual_seed(0)
    config = StudentConfig.from_preset(size, dict(specs), image_size=image_size)
    return Student(config, load_pretrained=False).to(device).train()


def random_inputs(
    specs: dict[str, TeacherSpec], batch: int, size: int, device: torch.device
) -> tuple[torch.Tensor, dict[str, TeacherOutput]]:
    """A batch of random images and teacher targets of the specs' shapes (seed 0)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)
    targets = {
        name: TeacherOutput(
            torch.randn(batch, *spec.grid, spec.channels, generator=generator).to(device),
            None
            if spec.cls_channels is None
            else torch.randn(batch, spec.cls_channels, generator=generator).to(device),
        )
        for name, spec in specs.items()
    }
    return images.to(device), targets


def measure_size(
    size: str, specs: dict[str, TeacherSpec], image_size: int, batches: tuple[int, int], batch: int
) -> tuple[list[OpCost], int]:
    cpu = torch.device("cpu")
    student = build_student(size, specs, image_size, cpu)
    runs = [count_step(student, *random_inputs(specs, b, image_size, cpu)) for b in batches]
    return extrapolated(runs[0], runs[1], batches, batch), sum(p.numel() for p in student.parameters())


def real_specs() -> dict[str, TeacherSpec]:
    from real_teachers import real_size_teacher

    # built without weights where the library allows it (CLIP's open_clip copies tensors while building)
    return {
        name: real_size_teacher(name, torch.device("cpu" if name == "clip" else "meta")).spec for name in FIVE
    }


def tiny_specs() -> dict[str, TeacherSpec]:
    from distill.teachers import load_teacher

    return {name: load_teacher(name, "tiny", device="cpu").spec for name in FIVE}


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("roofline", __doc__)
    parser.add_argument("--sizes", nargs="+", default=["deit_small", "deit_base"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument(
        "--device-name", default="NVIDIA H200", help="the GPU whose peak and bandwidth set the floor"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny teachers and student at 64 px: the code path"
    )
    args = parser.parse_args(argv)
    figures = device_figures(args.device_name)
    if figures is None:
        known = ", ".join(" ".join(keys) for keys, _, _ in DEVICES)
        parser.error(f"--device-name {args.device_name!r} is not in the table (known: {known})")
    started = time.perf_counter()
    specs, image_size, sizes = (tiny_specs(), 64, ["tiny"]) if args.smoke else (real_specs(), 224, args.sizes)
    result: dict[str, Any] = {
        "benchmark": "roofline",
        "smoke": args.smoke,
        "machine": machine(torch.device("cpu")),
        "device": {"name": args.device_name, "peak_bf16_tflops": figures[0], "bandwidth_tbs": figures[1]},
        "batch": args.batch,
        "teachers": {
            name: {"grid": list(spec.grid), "channels": spec.channels} for name, spec in specs.items()
        },
        "sizes": {},
    }
    for size in sizes:
        ops, parameters = measure_size(size, specs, image_size, (2, 4), args.batch)
        result["sizes"][size] = {"parameters": parameters, **summary(ops, parameters, *figures)}
        row = result["sizes"][size]
        print(
            f"{size}: {row['tflops_per_step']} TFLOP, {row['gb_moved_per_step']} GB per step at batch {args.batch}; "
            f"eager floor on {args.device_name} {row['floor_ms']} ms ({row['memory_bound_share_of_floor']:.0%} memory-bound), "
            f"MFU ceiling {row['eager_mfu_ceiling']}"
        )
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    write_result(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
