"""``python -m distill.decode`` / ``scripts/decoding/decoding_example.py``: decode media with a student checkpoint.

Writes one PNG grid per image (a folder's images in sorted order) or one MP4 per video, at the
video's frame rate with one grid per input frame.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from distill.cli_errors import exit_code_of
from distill.decode.api import decode_images, resolve_targets
from distill.decode.decoders import TARGETS, load_decoder_teachers, parse_targets, teachers_for
from distill.decode.grid import MIN_CELL
from distill.decode.masks import MaskSettings, Prompts, parse_box, parse_point
from distill.decode.media import media_kind, paired_clips, write_mp4, write_png
from distill.decode.render import render
from distill.models.student import Student


def parse_teacher_weights(items: Sequence[str]) -> dict[str, str]:
    """``--teacher-weights NAME=WEIGHTS ...`` (decode and the world model's rollout) -> {name: weights}."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ValueError(
                f"--teacher-weights {item!r} must be NAME=HUB_ID_OR_PATH, e.g. sam=vit_h:/ckpt/sam_vit_h.pth"
            )
        out[name] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m distill.decode",
        description="Decode a student checkpoint's predictions on an image, a folder of images or a video into "
        "PCA maps, SAM masks, depth and pixels, as labelled grids (PNG per image, MP4 per video).",
    )
    parser.add_argument(
        "--checkpoint", required=True, type=Path, help="student checkpoint folder (save_pretrained)"
    )
    parser.add_argument("--media", required=True, type=Path, help="an image, a folder of images, or a video")
    parser.add_argument("--output", required=True, type=Path, help="folder for the PNG / MP4 grids")
    parser.add_argument(
        "--targets",
        default=None,
        help=f"comma list from {','.join(TARGETS)} (default: all the checkpoint supports)",
    )
    parser.add_argument(
        "--compare-teachers", action="store_true", help="add a row with the teachers' own outputs"
    )
    parser.add_argument(
        "--teacher-media",
        type=Path,
        default=None,
        help="paired images (docs/alignment.md): the teachers' row is computed on these instead of --media "
        "(a folder pairs by relative path, suffix aside); needs --compare-teachers",
    )
    parser.add_argument(
        "--teachers-source",
        choices=("auto", "tiny", "hub"),
        default="auto",
        help="where the decoder teachers come from: tiny (offline miniatures), hub (pretrained weights), or auto: "
        "tiny when the checkpoint was trained on them, else hub (default)",
    )
    parser.add_argument(
        "--teacher-weights",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME=WEIGHTS",
        help="hub id, directory or file per teacher (implies hub under auto; default: the registry's weights)",
    )
    parser.add_argument(
        "--points",
        nargs="+",
        action="extend",
        default=[],
        metavar="X,Y[,LABEL]",
        help="SAM point prompts in canonical-view pixels, together one object; LABEL 1 foreground (default), 0 background",
    )
    parser.add_argument(
        "--boxes",
        nargs="+",
        action="extend",
        default=[],
        metavar="X0,Y0,X1,Y1",
        help="SAM box prompts, one object each",
    )
    defaults = MaskSettings()
    parser.add_argument(
        "--points-per-side", type=int, default=defaults.points_per_side, help="automatic mask grid"
    )
    parser.add_argument(
        "--pred-iou-thresh",
        type=float,
        default=defaults.pred_iou_thresh,
        help="automatic masks: minimum predicted IoU (lower it for untrained or tiny models)",
    )
    parser.add_argument(
        "--stability-score-thresh",
        type=float,
        default=defaults.stability_score_thresh,
        help="automatic masks: minimum stability score (same for student and teacher rows)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="frames per student / teacher forward")
    parser.add_argument("--cell", type=int, default=MIN_CELL, help="minimum grid cell size in pixels")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    return parser


def run(args: argparse.Namespace) -> list[Path]:
    """Decode every clip of ``args.media``; return the files written."""
    media_kind(args.media)  # a missing or unsupported path fails before any model loads
    if args.teacher_media is not None:
        media_kind(args.teacher_media)
        if not args.compare_teachers:
            raise ValueError("--teacher-media sets what the teachers' row sees; add --compare-teachers")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = Student.from_pretrained(args.checkpoint, device=device)
    size = model.config.image_size
    prompts = Prompts(tuple(parse_point(p) for p in args.points), tuple(parse_box(b) for b in args.boxes))
    prompts.check(size)
    settings = MaskSettings(
        points_per_side=args.points_per_side,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
    )
    specs = model.config.teachers
    wanted = parse_targets(args.targets) or TARGETS
    names = teachers_for(specs, wanted, args.compare_teachers)
    teachers = load_decoder_teachers(
        specs,
        names,
        args.teachers_source,
        parse_teacher_weights(args.teacher_weights),
        device,
        checkpoint=str(args.checkpoint),
    )
    targets = resolve_targets(model, args.targets, teachers)
    if prompts and "masks" not in targets:
        raise ValueError("--points/--boxes prompt SAM, but 'masks' is not among the decoded targets")
    written = []
    for clip, partner in paired_clips(args.media, args.teacher_media, size):
        teacher_frames = None if partner is None else partner.frames
        student, teacher = decode_images(
            model,
            clip.frames,
            targets,
            teachers,
            compare=args.compare_teachers,
            teacher_images=teacher_frames,
            mask_settings=settings,
            prompts=prompts,
            batch_size=args.batch_size,
        )
        grids = render(
            student,
            teacher,
            clip.frames,
            title=clip.source.name,
            min_cell=args.cell,
            teacher_images=teacher_frames,
        )
        if clip.fps is not None:  # a video
            written.append(write_mp4(grids, args.output / f"{clip.name}.mp4", clip.fps))
        else:
            written.append(write_png(grids[0], args.output / f"{clip.name}.png"))
        print(
            f"wrote {written[-1]} ({clip.frames.shape[0]} frame{'s' * (clip.frames.shape[0] > 1)})",
            flush=True,
        )
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def command() -> int:
        run(args)
        return 0

    return exit_code_of(command)
