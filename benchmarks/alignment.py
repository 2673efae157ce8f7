"""Cross-domain alignment with LoRA on planted domain shifts: held-out cosines before and after.

Procedural scenes are the target domain; the source domain is the same scenes under a planted shift
(colour inversion, and a semi-transparent band overlay). Two source encoders are aligned with
``preset=align`` on the paired dataset (source images, DINOv2 features of the target images):
a tiny student trained on the clean scenes (teacher: tiny DINOv2), and a copy of the teacher itself
(``adapter.encoder=teacher``: DINOv2 aligned to the frozen DINOv2). Reported on the held-out pairs (the
val split): the per-token and CLS cosine of the encoder on the source images against the teacher on the
target images, before (step 0) and after; beside them the student's in-domain cosine on clean images
(what the student's alignment can reach; the teacher's reaches 1). The decode command draws both sides
before and after the student's alignment into ``docs/images/alignment_<shift>.png``.

    python benchmarks/alignment.py --work /tmp/align --shifts invert overlay
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from common import HERE, base_parser, write_result
from distill.data.manifest import load_manifest
from distill.decode.media import folder_images
from distill.preprocess.calc_stats import StatsConfig, compute_stats
from distill.preprocess.extract import ExtractConfig, TeacherJob, extract_features
from distill.preprocess.organize import OrganizeConfig, organize_images
from distill.synthetic import SHIFTS, write_paired_folders

REPO = HERE.parent
TEACHER = "dinov2"


def build(work: Path, shift: str, per_class: int, size: int) -> tuple[Path, Path]:
    """The raw pairs (train/ and val/ folders, so both datasets split alike) and the two datasets."""
    raw = work / "raw"
    if not raw.is_dir():
        for split, count, seed in (("train", per_class, 0), ("val", max(2, per_class // 6), 1)):
            write_paired_folders(
                raw / "source" / split, raw / "target" / split, shift, 4, count, (size * 5 // 4, size), seed
            )
    data = work / "data"
    for name, source, target in (("clean", raw / "target", None), ("paired", raw / "source", raw / "target")):
        if (data / name / "manifest.json").is_file() and TEACHER in load_manifest(data / name).teachers:
            continue
        organize_images(
            OrganizeConfig(
                source, data / name, size=size, samples_per_shard=24, target=target, overwrite=True
            )
        )
        extract_features(
            ExtractConfig(data / name, (TeacherJob(TEACHER, "tiny"),), device="cpu", progress=False)
        )
    for name in (
        "clean",
        "paired",
    ):  # the student trains in the clean stats; the teacher aligns in the pairs'
        compute_stats(StatsConfig(dataset=data / name))
    return data, raw


def train(work: Path, data: Path, name: str, dataset: str, overrides: list[str]) -> Path:
    run = work / "runs" / name
    if (run / "student" / "model.safetensors").is_file():
        return run
    command = [
        sys.executable,
        str(REPO / "scripts" / "train_rvfm.py"),
        f"dataset.root={data}",
        f"dataset.name={dataset}",
        "dataset.num_streams=4",
        "teachers=dinov2",
        "teacher_source=tiny",
        "model=tiny",
        "device=cpu",
        f"output_dir={work / 'runs'}",
        f"run_name={name}",
        "logging.log_every=50",
        *overrides,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", HF_HUB_OFFLINE="1")
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"training {name} failed:\n{result.stderr[-4000:]}")
    return run


def val_records(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "val"]


def cosines(record: dict[str, Any]) -> dict[str, float]:
    return {"token": round(record[f"{TEACHER}/cos"], 4), "cls": round(record[f"{TEACHER}/cls_cos"], 4)}


def alignment(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Held-out cosines of an alignment run: before (step 0), after, and the curve."""
    curve = [{"step": r["step"], **cosines(r)} for r in records]
    return {"before": cosines(records[0]), "after": cosines(records[-1]), "curve": curve}


def decode_picture(work: Path, raw: Path, runs: dict[str, Path], output: Path, count: int) -> None:
    """Two held-out pairs decoded before and after alignment (the decode command, stacked)."""
    media = {side: work / "picture" / side for side in ("source", "target")}
    for side, folder in media.items():
        folder.mkdir(parents=True, exist_ok=True)
        for path in folder_images(raw / side / "val")[:count]:
            (folder / path.name).write_bytes(path.read_bytes())
    panels = []
    for label, checkpoint in runs.items():
        out = work / "picture" / label
        command = [sys.executable, "-m", "distill.decode", "--checkpoint", str(checkpoint)]
        command += ["--media", str(media["source"]), "--teacher-media", str(media["target"])]
        command += ["--compare-teachers", "--targets", "pca,pixels", "--output", str(out), "--device", "cpu"]
        subprocess.run(command, check=True, capture_output=True, text=True)
        grids = [Image.open(p).convert("RGB") for p in sorted(out.glob("*.png"))]
        width = sum(g.width for g in grids)
        panel = Image.new("RGB", (width, grids[0].height + 22), "white")
        ImageDraw.Draw(panel).text((6, 4), label, fill="black")
        x = 0
        for grid in grids:
            panel.paste(grid, (x, 22))
            x += grid.width
        panels.append(panel)
    picture = Image.new("RGB", (max(p.width for p in panels), sum(p.height for p in panels)), "white")
    y = 0
    for panel in panels:
        picture.paste(panel, (0, y))
        y += panel.height
    output.parent.mkdir(parents=True, exist_ok=True)
    picture.save(output)


def run_shift(args: argparse.Namespace, shift: str) -> dict[str, Any]:
    """Train the clean student, align it and a teacher copy to ``shift``; their held-out cosines."""
    work = args.work / shift
    data, raw = build(work, shift, args.per_class, args.size)
    common = ["training.batch_size=32", "training.warmup_steps=20"]
    base = train(
        work,
        data,
        "base",
        "clean",
        [
            *common,
            f"training.steps={args.base_steps}",
            "training.lr=2e-3",
            "training.weight_decay=0",
            f"training.checkpoint_every={args.base_steps}",
            "training.val_every=0",
        ],
    )
    align = [
        *common,
        "preset=align",
        f"training.steps={args.align_steps}",
        f"training.checkpoint_every={args.align_steps}",
        f"training.val_every={args.align_steps // 3}",
        f"adapter.rank={args.rank}",
        f"adapter.alpha={2 * args.rank}",
    ]
    aligned = train(work, data, "aligned", "paired", [*align, f"init_from={base / 'student'}"])
    teacher = train(work, data, "teacher_aligned", "paired", [*align, "adapter.encoder=teacher"])
    picture = REPO / "docs" / "images" / f"alignment_{shift}.png"
    decode_picture(
        work,
        raw,
        {"before: the trained student": base / "student", "after: merged LoRA student": aligned / "student"},
        picture,
        count=2,
    )
    in_domain = train(
        work,
        data,
        "in_domain",
        "clean",
        [
            *common,
            "preset=align",
            f"init_from={base / 'student'}",
            "training.steps=1",
            "training.checkpoint_every=1",
            "training.val_every=1",
        ],
    )
    return {
        "pairs": {split: info.count for split, info in load_manifest(data / "paired").splits.items()},
        "student": alignment(val_records(aligned)),
        "teacher": alignment(val_records(teacher)),
        "student_in_domain_clean": cosines(val_records(in_domain)[0]),
        "adapter_bytes": {
            "student": sum(p.stat().st_size for p in (aligned / "adapter").iterdir()),
            "teacher": sum(p.stat().st_size for p in (teacher / "adapter").iterdir()),
        },
        "picture": str(picture.relative_to(REPO)),
    }


def main() -> None:
    parser = base_parser("alignment", __doc__)
    parser.add_argument("--work", type=Path, default=Path("/tmp/distill-alignment"))
    parser.add_argument("--shifts", nargs="+", choices=SHIFTS, default=list(SHIFTS))
    parser.add_argument("--per-class", type=int, default=48, help="training pairs per class (4 classes)")
    parser.add_argument("--size", type=int, default=64, help="canonical view side")
    parser.add_argument("--base-steps", type=int, default=600)
    parser.add_argument("--align-steps", type=int, default=600)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()
    result = {
        "teacher": f"{TEACHER} (tiny, random init)",
        "student": "model=tiny",
        "canonical_size": args.size,
        "base_steps": args.base_steps,
        "align_steps": args.align_steps,
        "adapter": {"rank": args.rank, "alpha": 2 * args.rank, "target_modules": ["q_proj", "v_proj"]},
        "shifts": {shift: run_shift(args, shift) for shift in args.shifts},
    }
    write_result(args.output, result)


if __name__ == "__main__":
    main()
