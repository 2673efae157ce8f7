"""``distill-worldmodel train LATENTS OUT`` and ``distill-worldmodel rollout MODEL LATENTS``.

train: fit the latent world model (next z from the last H z's and actions) on a latent dataset.
rollout: open-loop rollouts on a held-out split; z cosine (and pixel PSNR with --student) per horizon
step beside copy-last-frame, written to <out>/metrics.json; with --student, the first --videos rollouts
decoded to MP4 and PNG next to the decoded ground truth.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from distill.cli_errors import exit_code_of
from distill.decode.cli import parse_teacher_weights
from distill.worldmodel.run import RolloutConfig, evaluate_rollouts
from distill.worldmodel.train import TrainConfig, train_world_model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill-worldmodel", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="fit a world model on a latent dataset")
    train.add_argument("latents", type=Path, help="latent dataset (distill-encode)")
    train.add_argument("output", type=Path, help="world-model checkpoint folder")
    train.add_argument("--split", default="train")
    train.add_argument("--action", default="action", help="per-frame array used as action ('' for none)")
    train.add_argument("--history", type=int, default=4)
    train.add_argument("--frame-skip", type=int, default=1)
    train.add_argument("--width", type=int, default=128)
    train.add_argument("--depth", type=int, default=2)
    train.add_argument("--heads", type=int, default=4)
    train.add_argument("--dropout", type=float, default=TrainConfig.dropout)
    train.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay)
    train.add_argument("--steps", type=int, default=1000)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="cpu")
    train.add_argument(
        "--target",
        choices=["z", "codes"],
        default="z",
        help="z: regress the next z | codes: cross-entropy over the next frame's codes (a quantised student's latents)",
    )
    train.add_argument("--log-every", type=int, default=TrainConfig.log_every, help="steps per logged loss")
    train.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help="steps between checkpoints, a multiple of --log-every (0: none)",
    )
    train.add_argument("--keep-last", type=int, default=2, help="checkpoints kept")
    train.add_argument(
        "--resume", action="store_true", help="continue from the output folder's latest checkpoint"
    )
    rollout = commands.add_parser("rollout", help="open-loop rollouts on held-out latents")
    rollout.add_argument("model", type=Path, help="world-model checkpoint folder")
    rollout.add_argument("latents", type=Path, help="latent dataset (distill-encode)")
    rollout.add_argument("output", type=Path, help="folder for metrics.json and the decoded rollouts")
    rollout.add_argument("--split", default="val")
    rollout.add_argument("--horizon", type=int, default=5)
    rollout.add_argument("--student", type=Path, default=None, help="the latents' student: PSNR and videos")
    rollout.add_argument("--videos", type=int, default=2, help="rollouts to decode to MP4/PNG")
    rollout.add_argument("--teachers-source", choices=["auto", "tiny", "hub"], default="auto")
    rollout.add_argument(
        "--teacher-weights",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME=WEIGHTS",
        help="hub id, directory or file per teacher, for the decoded videos (as distill-decode)",
    )
    rollout.add_argument("--device", default="cpu")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_code_of(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "train":
        cfg = TrainConfig(
            args.latents,
            args.output,
            args.split,
            args.action or None,
            args.history,
            args.frame_skip,
            args.width,
            args.depth,
            args.heads,
            args.dropout,
            args.steps,
            args.batch_size,
            args.lr,
            args.weight_decay,
            seed=args.seed,
            device=args.device,
            log_every=args.log_every,
            target=args.target,
            checkpoint_every=args.checkpoint_every,
            keep_last=args.keep_last,
            resume=args.resume,
        )
        print(json.dumps(train_world_model(cfg)))
    else:
        rollout_cfg = RolloutConfig(
            args.model,
            args.latents,
            args.output,
            args.split,
            args.horizon,
            args.student,
            args.videos,
            args.teachers_source,
            args.device,
            tuple(parse_teacher_weights(args.teacher_weights).items()),
        )
        print(json.dumps(evaluate_rollouts(rollout_cfg).to_dict()))
    return 0
