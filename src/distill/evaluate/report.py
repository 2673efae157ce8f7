"""report.json, report.md and the picture grid (input / decoded from z / PCA / mean image)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from distill.decode.grid import GridRow, cell_size, compose_grid
from distill.decode.media import write_png
from distill.evaluate.api import GridFrames, Report
from distill.evaluate.metrics import psnr
from distill.io import atomic_write_text

PIXEL_ROWS = (("z", "decoded from z"), ("pca", "PCA(d_z)"), ("mean_image", "mean image"))


def _cells(images: torch.Tensor) -> list[np.ndarray]:
    return list((images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())


def draw_grid(frames: GridFrames, pca_components: int) -> Image.Image:
    """One column per shown frame; each decoded cell carries its PSNR."""
    target = frames.images.float() / 255
    rows = [GridRow("input", _cells(target))]
    for (_, label), pred in zip(PIXEL_ROWS, (frames.from_z, frames.pca, frames.mean), strict=True):
        notes = [f"{v:.1f} dB" for v in psnr(pred, target).tolist()]
        rows.append(GridRow(label.replace("d_z", str(pca_components)), _cells(pred), notes))
    columns = [f"frame {i + 1}" for i in range(frames.images.shape[0])]
    return compose_grid(columns, rows, cell_size(frames.images.shape[-1], 128), title="held-out frames")


def markdown(report: Report, picture: str | None) -> str:
    lines = [
        f"# What z carries (d_z = {report.d_z})",
        "",
        f"Dataset `{report.dataset}`: baselines and probes fitted on `{report.train_split}` "
        f"({report.frames['train']} frames), scores on `{report.eval_split}` ({report.frames['eval']} frames).",
        "",
        "| pixels | PSNR mean (dB) | PSNR p5 | SSIM mean | SSIM p5 |",
        "|---|---|---|---|---|",
    ]
    for name, label in PIXEL_ROWS:
        row = report.pixels[name]
        lines.append(
            f"| {label.replace('d_z', str(report.pca_components))} | {row['psnr_mean']:.2f} | {row['psnr_p5']:.2f} | "
            f"{row['ssim_mean']:.3f} | {row['ssim_p5']:.3f} |"
        )
    if report.teachers:
        lines += ["", "| teacher (from z) | per-token cosine | CLS cosine |", "|---|---|---|"]
        for teacher, row in report.teachers.items():
            cls = f"{row['cls_cos']:.3f}" if "cls_cos" in row else "-"
            lines.append(f"| {teacher} | {row['patch_cos']:.3f} | {cls} |")
    if report.probe:
        lines += [
            "",
            f"| ridge probe R^2 (held-out) | from z | from PCA({report.pca_components}) |",
            "|---|---|---|",
        ]
        for name, probe in report.probe.items():
            for i, (from_z, from_pca) in enumerate(zip(probe["z"], probe["pca"], strict=True)):
                lines.append(f"| {name}[{i}] | {from_z:.3f} | {from_pca:.3f} |")
    video = report.video
    if "consecutive_cos" in video:
        lines += [
            "",
            f"z of consecutive frames: cosine {video['consecutive_cos']:.3f} (random pairs "
            f"{video['random_pair_cos']:.3f}); |z| mean {video['z_norm']['mean']:.2f}, "
            f"std {video['z_norm']['std']:.2f}.",
        ]
    if picture:
        lines += ["", f"![held-out frames: input, decoded from z, PCA, mean image]({picture})"]
    return "\n".join(lines) + "\n"


def write_report(report: Report, frames: GridFrames, output: Path) -> Path:
    """Write ``report.json``, ``report.md`` and ``grid.png`` into ``output``; returns the markdown path."""
    output.mkdir(parents=True, exist_ok=True)
    write_png(draw_grid(frames, report.pca_components), output / "grid.png")
    atomic_write_text(output / "report.json", json.dumps(report.to_dict(), indent=2) + "\n")
    atomic_write_text(output / "report.md", markdown(report, "grid.png"))
    return output / "report.md"
