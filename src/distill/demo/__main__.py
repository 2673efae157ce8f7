"""``python -m distill.demo`` (``make demo``): the whole pipeline on simulated PushT episodes, then a report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from distill.demo.pipeline import DemoConfig, run_demo
from distill.demo.report import write_report


def parse_weights(values: list[str]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for value in values:
        name, sep, weights = value.partition("=")
        if not sep or not name or not weights:
            raise SystemExit(
                f"--weights {value!r}: expected NAME=WEIGHTS, e.g. sam=vit_h:/models/sam_vit_h_4b8939.pth"
            )
        pairs.append((name, weights))
    return tuple(pairs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m distill.demo", description=__doc__)
    parser.add_argument("--output", type=Path, default=Path("runs/demo"), help="everything goes here")
    parser.add_argument(
        "--teachers", choices=("tiny", "hub"), default="tiny", help="tiny: offline miniatures"
    )
    parser.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="NAME=WEIGHTS",
        help="hub id, dir or file per teacher",
    )
    parser.add_argument("--episodes", type=int, default=DemoConfig.episodes, help="PushT episodes to render")
    parser.add_argument("--frames", type=int, default=DemoConfig.frames, help="frames per episode")
    parser.add_argument("--steps", type=int, default=DemoConfig.steps)
    parser.add_argument("--image-size", type=int, default=None, help="default: 64 tiny, 224 hub")
    parser.add_argument(
        "--model", default=None, help="configs/model option; default: tiny, deit_small for hub"
    )
    args = parser.parse_args(argv)
    hub = args.teachers == "hub"
    if args.weights and not hub:
        raise SystemExit(
            "--weights picks pretrained teacher weights, but --teachers tiny builds random miniatures; "
            "add --teachers hub or drop --weights"
        )
    image_size = args.image_size or (224 if hub else DemoConfig.image_size)
    cfg = DemoConfig(
        output=args.output.resolve(),
        teacher_source=args.teachers,
        weights=parse_weights(args.weights),
        image_size=image_size,
        render_size=max(DemoConfig.render_size, image_size),  # never upsample the simulator's frames
        model=args.model or ("deit_small" if hub else DemoConfig.model),
        episodes=args.episodes,
        frames=args.frames,
        steps=args.steps,
    )
    started = time.perf_counter()
    result = run_demo(cfg)
    report = write_report(result)
    print(f"\n[demo] done in {time.perf_counter() - started:.0f} s")
    print(f"[demo] report:    {report}")
    print(f"[demo] evaluated: {result.evaluation / 'report.md'}")
    print(f"[demo] decoded:   {result.decoded}")
    print(f"[demo] run dir:   {result.run_dir}")
    print(f"[demo] student:   {result.student} (load it with Student.from_pretrained)")


if __name__ == "__main__":
    main()
