"""Student size and forward throughput, with and without the CLS bottleneck.

Builds deit_tiny / deit_small / deit_base students (random init) predicting the five teachers at
their real output sizes, counts parameters per component and times the inference forward pass
(``Student.forward`` under ``torch.inference_mode``) on uint8 images at the training resolution.

    python benchmarks/student.py --output benchmarks/results/student.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from distill.features import TeacherSpec
from distill.io import atomic_write_text
from distill.models import Student, StudentConfig
from distill.models.config import Bottleneck, HeadKind

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP_NORM = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
SAM_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# Real-size output specs of the default teachers (the README teacher table).
REAL_TEACHERS = {
    "clip": TeacherSpec("clip", 224, *CLIP_NORM, grid=(16, 16), channels=1024, cls_channels=768),
    "dinov2": TeacherSpec("dinov2", 224, *IMAGENET, grid=(16, 16), channels=1024, cls_channels=1024),
    "mae": TeacherSpec("mae", 224, *IMAGENET, grid=(14, 14), channels=1024, cls_channels=1024),
    "sam": TeacherSpec("sam", 1024, *SAM_NORM, grid=(64, 64), channels=256, cls_channels=None),
    "depth_anything": TeacherSpec(
        "depth_anything", 224, *IMAGENET, grid=(16, 16), channels=1536, cls_channels=None
    ),
}


@dataclass
class Result:
    size: str
    bottleneck: str
    head: str
    params_total: int
    params_backbone: int
    params_bottleneck: int  # z projection + token decoder
    params_heads: dict[str, int]
    params_pixel_head: int
    gflops_per_image: dict[str, float]  # counted (torch FlopCounterMode), not timed: free of machine noise
    batch_size: int
    timed_batches: int
    images_per_s: float  # from the median batch time (robust to other load on a shared machine)
    images_per_s_best: float  # from the fastest batch
    ms_per_batch: list[float]


def count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def forward_flops(student: Student, images: torch.Tensor) -> dict[str, float]:
    """FLOPs of one forward pass per component (matmuls, convolutions, attention)."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        student(images)
    counts = counter.get_flop_counts()

    def total(*names: str) -> float:
        return float(sum(sum(counts.get(f"Student.{name}", {}).values()) for name in names))

    per_image = images.shape[0]
    out = {
        "total": float(counter.get_total_flops()),
        "backbone": total("backbone"),
        "bottleneck": total("to_z", "decoder"),
        "heads": total(*(f"heads.{name}" for name in student.heads)),
        "pixel_head": total("pixel_head"),
    }
    return {key: value / per_image for key, value in out.items()}


# The recorded results (results/student.json) were measured with z of 384 values for every size;
# the presets' own d_z (192 / 384 / 768) would change the figures of deit_tiny and deit_base slightly.
RECORDED_D_Z = 384


def measure(size: str, bottleneck: str, head: str, args: argparse.Namespace, device: torch.device) -> Result:
    config = StudentConfig.from_preset(
        size,
        dict(REAL_TEACHERS),
        d_z=RECORDED_D_Z,
        image_size=args.image_size,
        bottleneck=cast(Bottleneck, bottleneck),
        head=cast(HeadKind, head),
    )
    torch.manual_seed(0)
    student = Student(config).to(device).eval()
    images = torch.randint(0, 256, (args.batch_size, 3, args.image_size, args.image_size), dtype=torch.uint8)
    images = images.to(device)
    flops = forward_flops(student, images[:1])
    times: list[float] = []
    with torch.inference_mode():
        for step in range(args.warmup + args.batches):
            start = time.perf_counter()
            student(images)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step >= args.warmup:
                times.append(time.perf_counter() - start)
    return Result(
        size=size,
        bottleneck=bottleneck,
        head=head,
        params_total=count(student),
        params_backbone=count(student.backbone),
        params_bottleneck=count(student.to_z) + count(student.decoder),
        params_heads={name: count(module) for name, module in student.heads.items()},
        params_pixel_head=count(student.pixel_head),
        gflops_per_image={key: round(value / 1e9, 3) for key, value in flops.items()},
        batch_size=args.batch_size,
        timed_batches=args.batches,
        images_per_s=args.batch_size / statistics.median(times),
        images_per_s_best=args.batch_size / min(times),
        ms_per_batch=[round(t * 1000, 1) for t in times],
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/student.json"))
    parser.add_argument("--sizes", nargs="+", default=["deit_tiny", "deit_small", "deit_base"])
    parser.add_argument("--bottlenecks", nargs="+", default=["cls", "none"], choices=["cls", "none"])
    parser.add_argument("--head", default="mlp", choices=["mlp", "conv"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--batches", type=int, default=3, help="timed batches per configuration")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    results = []
    for size in args.sizes:
        for bottleneck in args.bottlenecks:
            result = measure(size, bottleneck, args.head, args, device)
            results.append(asdict(result))
            print(
                f"{size:>10} bottleneck={bottleneck:<4} params {result.params_total / 1e6:7.2f}M "
                f"(backbone {result.params_backbone / 1e6:.2f}M, bottleneck {result.params_bottleneck / 1e6:.2f}M, "
                f"heads {sum(result.params_heads.values()) / 1e6:.2f}M) {result.gflops_per_image['total']:6.2f} GFLOP/image  {result.images_per_s:7.2f} images/s (best {result.images_per_s_best:.2f})",
                flush=True,
            )
    report = {
        "benchmark": "student_forward",
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "machine": platform.machine(),
        "image_size": args.image_size,
        "teachers": {name: spec.to_dict() for name, spec in REAL_TEACHERS.items()},
        "results": results,
    }
    atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return report


if __name__ == "__main__":
    main()
