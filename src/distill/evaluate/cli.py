"""``python -m distill.evaluate CHECKPOINT DATASET --output DIR``: what z carries, as report.json + report.md."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from distill.cli_errors import exit_code_of
from distill.evaluate.api import EvalConfig, evaluate_student
from distill.evaluate.report import write_report
from distill.models.student import Student


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill-evaluate",
        description="Measure what a student's z carries on held-out frames: pixels decoded from z (PSNR, SSIM) "
        "beside the mean image and PCA of the same width fitted on the train split, each teacher's cosine "
        "from z, ridge probes from z to the frames' metadata arrays (e.g. simulator state), and z's "
        "temporal statistics on videos.",
    )
    parser.add_argument(
        "checkpoint", type=Path, help="student folder (config.json + model.safetensors + stats/)"
    )
    parser.add_argument("dataset", type=Path, help="dataset folder holding manifest.json")
    parser.add_argument(
        "--output", type=Path, required=True, help="folder for report.json, report.md, grid.png"
    )
    parser.add_argument("--train-split", default="train", help="split the baselines and probes are fitted on")
    parser.add_argument("--eval-split", default="val", help="held-out split everything is scored on")
    parser.add_argument("--max-train-frames", type=int, default=20_000)
    parser.add_argument("--max-eval-frames", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--grid-frames", type=int, default=8, help="held-out frames drawn in grid.png")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_code_of(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    model = Student.from_pretrained(args.checkpoint, device=args.device)
    cfg = EvalConfig(
        args.dataset,
        args.train_split,
        args.eval_split,
        args.max_train_frames,
        args.max_eval_frames,
        args.batch_size,
        args.grid_frames,
    )
    report, frames = evaluate_student(model, cfg)
    path = write_report(report, frames, args.output)
    print(json.dumps({"report": str(path), "pixels": report.pixels, "probe": report.probe}))
    return 0
