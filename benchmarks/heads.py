"""The mlp spatial heads before and after mapping channels on the smaller grid (same result, fewer FLOPs).

Before: LayerNorm, resample the student's 14x14 grid to each teacher's grid (SAM: 64x64), then the
two 1x1 layers there. After (``SpatialHead`` now): the first layer runs on the 14x14 grid and its
output is resampled. Counted FLOPs (forward + backward) of a ``deit_small`` student with the five
real-size heads, and its CPU training step time (forward, loss, backward, AdamW), both orders
timed interleaved.

    python benchmarks/heads.py --output benchmarks/results/heads.json
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import base_parser, machine, paired_ratio, write_result
from distill.models.heads import SpatialHead, resample_grid
from gpu import make_step
from roofline import build_student, random_inputs
from student import REAL_TEACHERS


def _resample_then_map(self: SpatialHead, tokens: torch.Tensor) -> torch.Tensor:
    x = resample_grid(self.norm(tokens), self.grid).permute(0, 3, 1, 2)
    return self.out(self.act(self.mix(x))).permute(0, 2, 3, 1)


@contextmanager
def resample_first() -> Iterator[None]:
    """The order before this change, for measuring only."""
    now = SpatialHead.forward
    SpatialHead.forward = _resample_then_map  # type: ignore[method-assign]
    try:
        yield
    finally:
        SpatialHead.forward = now  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("heads", __doc__)
    parser.add_argument("--size", default="deit_small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    student = build_student(args.size, REAL_TEACHERS, 224, device)
    step = make_step(student, student, device)
    images, targets = random_inputs(REAL_TEACHERS, args.batch, 224, device)

    def before() -> None:
        with resample_first():
            step(images, targets)

    def after() -> None:
        step(images, targets)

    def flops(run: Callable[[], None]) -> dict[str, float]:
        with FlopCounterMode(display=False) as counter:
            run()
        counts = counter.get_flop_counts()
        heads = sum(sum(counts.get(f"Student.heads.{name}", {}).values()) for name in REAL_TEACHERS)
        return {
            "total_gflop_per_image": round(counter.get_total_flops() / args.batch / 1e9, 2),
            "heads_gflop_per_image": round(heads / args.batch / 1e9, 2),
        }

    with torch.no_grad():
        out_after = student(images).features["sam"].patch
        with resample_first():
            out_before = student(images).features["sam"].patch
    counted = {"before": flops(before), "after": flops(after)}
    timing = paired_ratio(before, after, args.repeats)
    result = {
        "benchmark": "heads",
        "machine": machine(device),
        "size": args.size,
        "batch": args.batch,
        "forward_plus_backward": counted,
        "sam_patch_max_abs_difference": float((out_after - out_before).abs().max()),
        "cpu_step_seconds": {"before": timing["reference_seconds"], "after": timing["candidate_seconds"]},
        "speedup": timing["ratio"],
        "note": "CPU shared with other jobs (2 cores): step times are medians of interleaved repeats",
    }
    write_result(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
