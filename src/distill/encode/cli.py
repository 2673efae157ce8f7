"""``distill-encode CHECKPOINT DATASET OUTPUT``: a frames dataset -> a latent dataset, under torchrun or not.

Rank r of W encodes videos r, r + W, ...; every video file is written atomically and a rerun resumes
(finished videos are skipped). Run as ``torchrun --nproc_per_node N -m distill.encode ...``,
``python -m distill.encode``, ``distill-encode`` or scripts/encode_latents.py.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from distill import distributed as dist
from distill.cli_errors import exit_code_of
from distill.encode.export import EncodeConfig, encode_latents


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill-encode", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "checkpoint", type=Path, help="student checkpoint folder (config.json, model.safetensors)"
    )
    parser.add_argument("dataset", type=Path, help="frames dataset built by distill-subsample-videos")
    parser.add_argument(
        "output", type=Path, help="latent dataset folder (latents.json, <split>/<video>.safetensors)"
    )
    parser.add_argument("--splits", nargs="*", default=[], help="splits to encode (default: all)")
    parser.add_argument("--batch-size", type=int, default=64, help="frames per forward pass")
    parser.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK when present, else cpu")
    parser.add_argument(
        "--overwrite", action="store_true", help="delete the output's latents first (another checkpoint)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_code_of(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = EncodeConfig(
        args.checkpoint,
        args.dataset,
        args.output,
        tuple(args.splits),
        args.batch_size,
        args.device,
        args.overwrite,
    )
    info = dist.init_control_group()
    try:
        report = encode_latents(cfg)
    finally:
        dist.shutdown(info)
    if info.is_main:
        print(
            json.dumps(
                {"written": report.videos_written, "skipped": report.videos_skipped, "frames": report.frames}
            )
        )
    return 0
