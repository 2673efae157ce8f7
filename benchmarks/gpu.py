"""Where users run distill: one GPU, bf16. One command, at most 5 minutes, one JSON and a short table.

    python benchmarks/gpu.py                                    # -> benchmarks/results/gpu.json
    python benchmarks/gpu.py --smoke --output /tmp/smoke.json   # the same code paths, tiny, on CPU (CI)

1. Extraction: the five teachers at their real sizes (real architectures; random weights unless
   ``--weights``), the extraction pipeline's images/s against the bare forward pass on the same
   batches in the same precision (bf16 autocast), warmed up and interleaved; the per-token cosine
   of each teacher's bf16 features to its fp32 features.
2. Training step of ``deit_small`` and ``deit_base`` with the five real-size heads, as the trainer
   runs it (bf16 autocast, SDPA attention, fused AdamW, loss checks, gradient clipping), with
   ``torch.compile`` off and on (on: the student and the patch loss, as ``training.compile`` does): step time, images/s, and MFU = counted FLOPs of forward + backward
   (torch's formulas, counted by benchmarks/roofline.py) / step time / the device's dense bf16 peak;
   the step over its eager floor (the sum over its operators of max(FLOPs / peak, bytes / bandwidth):
   how far the kernels are from the device's limits). ``--peak-tflops`` and ``--bandwidth-tbs`` when
   the device is not in the table. Uncompiled rows also list the operators with the most device and host time.
3. Training loader with ``device=cuda`` (workers ship int8, the GPU dequantises and normalises)
   feeding the ``deit_small`` step, against the same batches already in GPU memory; the loader
   alone, in samples/s per worker core, and the cores that step needs. Every figure of this section
   uses one step, measured here: uncompiled, as the trainer runs by default (training.compile=false).
Peak GPU memory for each. ``--smoke``: tiny teachers and student, 64 px, a few batches, compile
with the ``eager`` backend (dynamo only: inductor's C++ build would take minutes on CPU).
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common import FIVE, base_parser, machine, paired_ratio, spread, synthetic_dataset, write_result
from distill.data.dataset import Batch
from distill.data.loader import LoaderConfig, train_batches
from distill.features import TeacherOutput, TeacherSpec
from distill.losses import LossConfig, PatchTerms, distillation_loss, patch_terms
from distill.models import Student
from distill.optim import build_optimizer
from distill.preprocess.calc_stats import StatsConfig, compute_stats
from distill.preprocess.extract import ExtractConfig, TeacherJob, decode_batches
from distill.teachers import Teacher
from distill.teachers.precision import run_teacher
from distill.train.precision import autocast_factory
from distill.train.trainer import check_step
from extraction import measure
from real_teachers import build_teachers
from roofline import build_student, count_step, device_figures, random_inputs, summary

FIDELITY_IMAGES = 4  # images of the bf16-vs-fp32 comparison (every token of each is compared)


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: the GPU plan fits 5 minutes on an H100-class GPU; the smoke plan a few seconds."""

    teachers: str  # tiny | random | hub
    canonical_size: int
    images: int
    extract_batch: int
    train_batch: int
    sizes: tuple[str, ...]
    warmup_steps: int
    timed_steps: int
    repeats: int
    loader_workers: int
    num_streams: int
    compile_backend: str


def make_plan(smoke: bool, weights: bool) -> Plan:
    if smoke:
        return Plan("tiny", 64, 8, 4, 2, ("tiny",), 0, 1, 1, 1, 2, "eager")
    workers = max(1, min(12, (os.cpu_count() or 2) - 2))
    # extraction batches never cross a shard: 256 images in 16 shards (one per stream) give batches of 16
    return Plan(
        "hub" if weights else "random", 224, 256, 16, 256, ("deit_small", "deit_base"), 3, 10, 3, workers, 16,
        "inductor",
    )  # fmt: skip


def device_limits(
    device: torch.device, peak_override: float | None, bandwidth_override: float | None
) -> tuple[float | None, float | None]:
    """(dense bf16 peak TFLOP/s, memory bandwidth TB/s): the overrides, else the table's for the device."""
    known = device_figures(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    peak, bandwidth = known if known is not None else (None, None)
    return (peak if peak_override is None else peak_override), (
        bandwidth if bandwidth_override is None else bandwidth_override
    )


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- 1. extraction


def extraction(
    dataset: Path, teachers: dict[str, Teacher], plan: Plan, device: torch.device
) -> dict[str, Any]:
    """Pipeline vs bare forward (benchmarks/extraction.py's measure), bf16 fidelity; leaves int8 features."""
    reset_memory(device)
    batches = [
        images.to(device)
        for shard in sorted((dataset / "images").glob("train-*.tar"))
        for _, images in decode_batches(shard, plan.canonical_size, plan.extract_batch, 1)
    ]
    jobs = tuple(TeacherJob(name, "tiny", None, "int8") for name in teachers)
    cfg = ExtractConfig(
        dataset,
        jobs,
        batch_size=plan.extract_batch,
        device=str(device),
        decode_threads=2,
        precision="bf16",
        overwrite=True,
        progress=False,
    )
    run = measure(teachers, batches, cfg, plan.repeats, device)
    # the pipeline's peak, read before the fp32 pass below (SAM's fp32 attention takes more)
    peak_gb = peak_memory_gb(device)
    fidelity = {}
    sample = batches[0][:FIDELITY_IMAGES]
    for name, teacher in teachers.items():
        fp32 = run_teacher(teacher, sample, "fp32")
        bf16 = run_teacher(teacher, sample, "bf16")
        cosine = F.cosine_similarity(fp32.patch.flatten(0, -2), bf16.patch.flatten(0, -2), dim=-1)
        fidelity[name] = {"mean": round(cosine.mean().item(), 5), "min": round(cosine.min().item(), 5)}
    return {**run, "peak_gpu_memory_gb": peak_gb, "bf16_vs_fp32_token_cosine": fidelity}


# ----------------------------------------------------------------------------- 2. training step


Step = Callable[[torch.Tensor, dict[str, TeacherOutput]], None]
Limits = tuple[float | None, float | None]  # (peak bf16 TFLOP/s, bandwidth TB/s), None: not known


def make_step(
    student: Student, model: nn.Module, device: torch.device, patch_loss: PatchTerms = patch_terms
) -> Step:
    """One optimiser step as distill.train.Trainer takes it (grad_accum 1); compiled, the trainer
    compiles the patch loss too."""
    optimizer = build_optimizer(
        student, lr=1e-4, weight_decay=0.05, betas=(0.9, 0.999), no_decay_names=("queries",), fused=device.type == "cuda"
    )  # fmt: skip
    autocast = autocast_factory("auto", device)
    loss_cfg = LossConfig()

    def step(images: torch.Tensor, targets: dict[str, TeacherOutput]) -> None:
        with autocast():
            output = model(images)
        breakdown = distillation_loss(output, targets, images, loss_cfg, patch_loss)
        breakdown.total.backward()
        check_step(student, [breakdown], 1, 0, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


@dataclass(frozen=True)
class Counted:
    """One size's step as counted by roofline.count_step: FLOPs, and the eager floor on this device."""

    flops: float
    floor_ms: float | None


def count(
    student: Student, images: torch.Tensor, targets: dict[str, TeacherOutput], limits: Limits
) -> Counted:
    """Counted FLOPs of forward + loss + backward (the optimiser's are negligible) and, with the device's
    peak and bandwidth known, the eager floor (benchmarks/roofline.py): the measured step over it says
    how far the kernels are from the device's limits."""
    ops = count_step(student, images, targets)
    flops = sum(op.flops for op in ops)
    peak, bandwidth = limits
    if peak is None or bandwidth is None:
        return Counted(flops, None)
    parameters = sum(p.numel() for p in student.parameters())
    return Counted(flops, summary(ops, parameters, peak, bandwidth)["floor_ms"])


def training(
    specs: dict[str, TeacherSpec], plan: Plan, device: torch.device, limits: Limits
) -> list[dict[str, Any]]:
    """One row per size and compile setting; a row that fails (say, a compiler error) records it."""
    images, targets = random_inputs(specs, plan.train_batch, plan.canonical_size, device)
    out = []
    for size in plan.sizes:
        counted = None  # once per size, on the uncompiled student
        for compiled in (False, True):
            reset_memory(device)
            try:
                row, counted = train_row(
                    size, compiled, specs, plan, device, limits, images, targets, counted
                )
                out.append(row)
            except Exception as exc:
                out.append({"size": size, "compile": compiled, **failure(exc)})
            torch._dynamo.reset()
    return out


def train_row(
    size: str,
    compiled: bool,
    specs: dict[str, TeacherSpec],
    plan: Plan,
    device: torch.device,
    limits: Limits,
    images: torch.Tensor,
    targets: dict[str, TeacherOutput],
    counted: Counted | None,
) -> tuple[dict[str, Any], Counted]:
    """The row of one size and compile setting, and the step's counts (``counted`` when given)."""
    student = build_student(size, specs, plan.canonical_size, device)
    model: nn.Module = student
    patch_loss: PatchTerms = patch_terms
    if compiled:
        model = torch.compile(student, backend=plan.compile_backend)  # type: ignore[assignment]
        patch_loss = torch.compile(patch_terms, backend=plan.compile_backend, dynamic=False)  # as the trainer
    step = make_step(student, model, device, patch_loss)
    if counted is None:
        counted = count(student, images, targets, limits)
    started = time.perf_counter()
    step(images, targets)
    sync(device)
    first_s = time.perf_counter() - started
    for _ in range(plan.warmup_steps):
        step(images, targets)
    times = []
    for _ in range(plan.timed_steps):
        started = time.perf_counter()
        step(images, targets)
        sync(device)
        times.append(time.perf_counter() - started)
    median = spread(times)["median"]
    achieved = counted.flops / median / 1e12
    peak = limits[0]
    row = {
        "size": size,
        "compile": compiled,
        "compile_backend": plan.compile_backend if compiled else None,
        "batch": plan.train_batch,
        "attention": student.backbone.config._attn_implementation,
        "first_step_s": round(first_s, 2),
        "step_s": spread(times),
        "images_per_s": round(plan.train_batch / median, 1),
        "gflops_per_step": round(counted.flops / 1e9, 3),
        "achieved_tflops": round(achieved, 4),
        "mfu": None if peak is None else round(achieved / peak, 3),
        "eager_floor_ms": counted.floor_ms,
        "over_eager_floor": None if counted.floor_ms is None else round(median * 1e3 / counted.floor_ms, 2),
        "peak_gpu_memory_gb": peak_memory_gb(device),
    }
    if not compiled:
        row["top_ops"] = op_profile(lambda: step(images, targets), device)
    return row, counted


def op_profile(step: Callable[[], None], device: torch.device, steps: int = 2) -> dict[str, Any]:
    """Where ``steps`` runs of ``step`` spend their time, from one profile: the operators with the most
    self time on the GPU (``device``; the CPU's when there is none) and on the host threads (``host``:
    what they wait in, such as a synchronisation or an allocation), so a missed target names its
    cause. A profiler failure is recorded instead: it must not cost a section its timings."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    try:
        with torch.profiler.profile(activities=activities) as profiler:
            for _ in range(steps):
                step()
            sync(device)
        # host-side events only: each kernel's time is then counted once, under the operator that
        # launched it (the kernels' own events and the GPU-side copies of marked ranges would count it again)
        events = [e for e in profiler.key_averages() if e.device_type == torch.autograd.DeviceType.CPU]
    except Exception as exc:
        return failure(exc)
    on_device = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return {
        "device": top_ops(events, on_device, steps),
        "host": top_ops(events, "self_cpu_time_total", steps),
    }


def top_ops(events: list[Any], attribute: str, steps: int, top: int = 12) -> list[dict[str, Any]]:
    """The ``top`` events by ``attribute`` (microseconds), per step and as a share of all of them."""
    averages = [(getattr(event, attribute), event.key) for event in events]
    total = sum(us for us, _ in averages) or 1.0
    return [
        {"op": key, "ms_per_step": round(us / steps / 1e3, 3), "share": round(us / total, 4)}
        for us, key in sorted(averages, reverse=True)[:top]
    ]


# ----------------------------------------------------------------------------- 3. loader


def loader(dataset: Path, specs: dict[str, TeacherSpec], plan: Plan, device: torch.device) -> dict[str, Any]:
    """The deit_small step fed by the loader (device=...) vs by the same batches held in GPU memory.

    The cores the step needs divide its samples/s by the loader's per core, both measured here on the
    same uncompiled step (the training section's compiled step would be faster than the one fed).
    """
    names = tuple(specs)
    stats_dir = dataset.parent / "stats"
    compute_stats(StatsConfig(dataset, names, "train", stats_dir))
    cfg = LoaderConfig(
        dataset,
        names,
        stats_dir,
        global_batch=plan.train_batch,
        num_streams=plan.num_streams,
        shuffle_buffer=plan.train_batch // plan.num_streams,
        num_workers=plan.loader_workers,
        pin_memory=device.type == "cuda",
        device=str(device),
    )
    steps = max(1, plan.timed_steps // 2)
    reset_memory(device)
    memory = list(itertools.islice(train_batches(cfg), steps))
    student = build_student(plan.sizes[0], specs, plan.canonical_size, device)
    step = make_step(student, student, device)
    stream: Iterator[Batch] = train_batches(cfg)

    def run(batches: Callable[[], Iterator[Batch]]) -> Callable[[], None]:
        def go() -> None:
            for batch in itertools.islice(batches(), steps):
                step(batch.images, batch.targets)

        return go

    fed = paired_ratio(run(lambda: iter(memory)), run(lambda: stream), plan.repeats, device)

    def fed_step() -> None:
        batch = next(stream)
        step(batch.images, batch.targets)

    profile = op_profile(fed_step, device)
    started = time.perf_counter()
    for batch in itertools.islice(stream, 2 * steps):
        batch.images.sum()
    sync(device)
    alone = 2 * steps * plan.train_batch / (time.perf_counter() - started)
    per_core = alone / plan.loader_workers
    step_s = fed["reference_seconds"]["median"] / steps
    return {
        "workers": plan.loader_workers,
        "num_streams": plan.num_streams,
        "global_batch": plan.train_batch,
        "steps_per_repeat": steps,
        "steps_per_s_memory": round(steps / fed["reference_seconds"]["median"], 2),
        "steps_per_s_loader": round(steps / fed["candidate_seconds"]["median"], 2),
        "loader_over_memory": fed["ratio"],
        "step": f"{plan.sizes[0]}, uncompiled, on the in-memory batches (steps_per_s_memory)",
        "step_s": round(step_s, 6),
        "loader_alone_samples_per_s": round(alone, 1),
        "samples_per_s_per_worker_core": round(per_core, 1),
        "cores_to_feed_the_step": round(plan.train_batch / step_s / per_core, 1),
        "peak_gpu_memory_gb": peak_memory_gb(device),
        "fed_step_top_ops": profile,
    }


# ----------------------------------------------------------------------------- report


def table(result: dict[str, Any]) -> str:
    ext, rows, feed = result["extraction"], result["training"], result["loader"]
    lines = [f"device: {result['machine']['device']}  (peak bf16 {result['peak_bf16_tflops']} TFLOP/s)"]
    if "error" in ext:
        lines.append(f"extraction  {ext['error']}")
    else:
        lines.append(
            f"extraction  pipeline {ext['pipeline_samples_per_s']} img/s / bare {ext['bare_forward_samples_per_s']} "
            f"= {ext['ratio']} (target >= 0.95), peak {ext['peak_gpu_memory_gb']} GB"
        )
    if isinstance(rows, dict):  # the whole section failed: one row that says so
        rows = [{"size": "-", "compile": "-", **rows}]
    for row in rows:
        head = f"train {row['size']:<10} compile={row['compile']!s:<5}"
        if "error" in row:
            lines.append(f"{head} {row['error']}")
            continue
        lines.append(
            f"{head} {row['step_s']['median'] * 1e3:8.1f} ms/step "
            f"{row['images_per_s']:8.1f} img/s  MFU {row['mfu']}  {row['over_eager_floor'] or '-'}x eager floor  "
            f"peak {row['peak_gpu_memory_gb']} GB"
        )
    if "error" in feed:
        lines.append(f"loader      {feed['error']}")
    else:
        lines.append(
            f"loader      {feed['loader_over_memory']['median']} of in-memory steps/s (target >= 0.98), "
            f"{feed['samples_per_s_per_worker_core']} samples/s per worker core, "
            f"{feed['cores_to_feed_the_step']} cores to feed its step ({feed['step']})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("gpu", __doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU: the code paths, not figures")
    parser.add_argument(
        "--weights",
        nargs="*",
        metavar="NAME=WEIGHTS",
        default=None,
        help="real teacher weights (registry defaults unless NAME=WEIGHTS given; needs them locally or a hub)",
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the device")
    parser.add_argument("--bandwidth-tbs", type=float, default=None, help="memory bandwidth of the device")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    plan = make_plan(args.smoke, args.weights is not None)
    device = torch.device("cpu") if args.smoke else torch.device(args.device or "cuda")
    weights = dict(item.split("=", 1) for item in args.weights or [])
    limits = device_limits(device, args.peak_tflops, args.bandwidth_tbs)
    host = machine(device)  # before the loader's workers change the thread settings
    result: dict[str, Any] = {
        "benchmark": "gpu",
        "smoke": args.smoke,
        "complete": False,
        "machine": host,
        "plan": asdict(plan),
        "peak_bf16_tflops": limits[0],
        "bandwidth_tbs": limits[1],
        "targets": {"extraction_ratio": 0.95, "deit_base_mfu_h100": 0.40, "loader_over_memory": 0.98},
    }
    failed = []
    with tempfile.TemporaryDirectory() as scratch:
        dataset = synthetic_dataset(
            Path(scratch), plan.images, plan.canonical_size, plan.images // plan.num_streams
        )
        teachers = build_teachers(FIVE, plan.teachers, device, weights)
        specs = {name: teacher.spec for name, teacher in teachers.items()}
        result["teachers"] = {name: spec.to_dict() for name, spec in specs.items()}
        sections: list[tuple[str, Callable[[], Any]]] = [
            ("extraction", lambda: extraction(dataset, teachers, plan, device)),
            ("training", lambda: training(specs, plan, device, limits)),
            ("loader", lambda: loader(dataset, specs, plan, device)),  # reads the extraction's features
        ]
        for name, work in sections:
            if name == "loader" and "extraction" in failed:
                result[name] = {"error": "not run: the extraction section, which writes its features, failed"}
            elif not run_section(result, name, work) or (
                name == "training" and any("error" in row for row in result[name])
            ):
                failed.append(name)
            if name == "extraction":
                teachers.clear()  # their GPU memory, before the student steps
                reset_memory(device)
            result["wall_seconds"] = round(time.perf_counter() - started, 1)
            write_result(args.output, result, echo=False)  # kept if a later section dies
    result["complete"] = not failed
    write_result(args.output, result)
    print(table(result))
    return 1 if failed else 0


def run_section(result: dict[str, Any], name: str, work: Callable[[], Any]) -> bool:
    """``result[name] = work()``; an exception is recorded there instead (and printed), so the other
    sections still run and a scarce GPU run keeps what it measured."""
    try:
        result[name] = work()
        return True
    except Exception as exc:
        result[name] = failure(exc)
        return False


def failure(exc: Exception) -> dict[str, str]:
    """What a failed section or training row records in place of its figures (the traceback is printed)."""
    traceback.print_exc()
    return {"error": f"{type(exc).__name__}: {exc}"}


if __name__ == "__main__":
    raise SystemExit(main())
