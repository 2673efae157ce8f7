"""The demo's report: a Markdown page with the loss curves, the evaluation, sampled decoded frames, the commands."""

from __future__ import annotations

import json
from pathlib import Path

import av

from distill.demo.pipeline import TEACHERS, DemoResult
from distill.demo.plot import line_plot
from distill.io import atomic_write_text

REPORT_FILE = "report.md"


def read_metrics(path: Path) -> list[dict[str, float | str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the training step logged no metrics")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def loss_series(records: list[dict[str, float | str]]) -> dict[str, list[tuple[float, float]]]:
    """Train ``loss`` and every ``*/total`` term, plus the validation loss, keyed for the plot legend."""
    series: dict[str, list[tuple[float, float]]] = {}
    for record in records:
        kind, step = str(record["kind"]), float(record["step"])
        for key, value in record.items():
            if key == "loss" or (kind == "train" and key.endswith("/total")):
                series.setdefault(f"{kind}/{key}", []).append((step, float(value)))
    return series


def sample_frames(video: Path, folder: Path, count: int = 3) -> list[Path]:
    """Save ``count`` evenly spaced frames of a decoded MP4 as PNGs (the report shows stills)."""
    with av.open(str(video)) as container:
        frames = [frame.to_image() for frame in container.decode(video=0)]
    if not frames:
        raise ValueError(f"{video} has no frames")
    picks = sorted({round(i * (len(frames) - 1) / max(count - 1, 1)) for i in range(count)})
    paths = []
    for index in picks:
        path = folder / f"{video.stem}_frame{index:03d}.png"
        frames[index].save(path)
        paths.append(path)
    return paths


def evaluation_lines(folder: Path, out: Path) -> list[str]:
    """distill-evaluate's tables, without its title, with its picture linked from the demo report."""
    lines = (folder / "report.md").read_text().split("\n", 1)[1].strip("\n").splitlines()
    return [line.replace("](grid.png)", f"]({(folder / 'grid.png').relative_to(out)})") for line in lines]


def horizons_text(horizons: list[int]) -> str:
    return f"at horizons {', '.join(map(str, horizons))}" if horizons else "at no horizon"


def world_model_lines(result: DemoResult) -> list[str]:
    """The rollout metrics per horizon step (world model beside copy-last-frame) and the decoded rollout."""
    metrics = json.loads((result.rollouts / "metrics.json").read_text(encoding="utf-8"))
    cosine, psnr = metrics["cosine"], metrics["psnr"]
    out = result.config.output
    strips = sorted(result.rollouts.glob("rollout_*.png"))
    ahead = [h + 1 for h in range(metrics["horizon"]) if cosine["world_model"][h] > cosine["copy_last"][h]]
    return [
        f"## A world model on z ({result.config.world_model_steps} steps; {metrics['windows']} held-out windows)",
        "",
        "Open loop: 4 true z's and every action in, its own predictions fed back. Cosine to the true z, and "
        "PSNR of the pixels decoded from each z (`encoded`: from the true frame's own z, the ceiling).",
        "",
        "| horizon | z cosine: world model | copy last | PSNR (dB): world model | copy last | encoded |",
        "|---|---|---|---|---|---|",
        *[
            f"| t+{h + 1} | {cosine['world_model'][h]:.3f} | {cosine['copy_last'][h]:.3f} | "
            f"{psnr['world_model'][h]:.2f} | {psnr['copy_last'][h]:.2f} | {psnr['encoded'][h]:.2f} |"
            for h in range(metrics["horizon"])
        ],
        "",
        f"The world model's z cosine is above copy-last-frame's {horizons_text(ahead)} of "
        f"1-{metrics['horizon']}. A short run on the demo's few training episodes shows the machinery; "
        "`benchmarks/worldmodel.py` (400 episodes) measures what it learns.",
        "",
        *[f"- [{v.relative_to(out)}]({v.relative_to(out)})" for v in sorted(result.rollouts.glob("*.mp4"))],
        "",
        *[f"![{strip.stem}]({strip.relative_to(out)})" for strip in strips],
        "",
    ]


def write_report(result: DemoResult) -> Path:
    out = result.config.output
    records = read_metrics(result.run_dir / "metrics.jsonl")
    # The log axis takes the terms that stay positive; the sprite search is a change of pixel error
    # (negative when the sprites help), so it stays in metrics.jsonl but off this plot.
    series = {name: points for name, points in loss_series(records).items() if all(y > 0 for _, y in points)}
    curve = line_plot(series, out / "loss_curve.png", title="demo training loss", log_y=True)
    train = [r for r in records if r["kind"] == "train"]
    first, last = float(train[0]["loss"]), float(train[-1]["loss"])
    videos = sorted(result.decoded.rglob("*.mp4"))
    stills = [still for video in videos for still in sample_frames(video, out)]
    cfg = result.config
    lines = [
        "# distill demo report",
        "",
        f"Data: {cfg.episodes} PushT episodes of {cfg.frames} frames (gym-pusht, scripted pusher), "
        f"about a fifth of them held out whole. Teachers: {cfg.teacher_source} "
        f"({', '.join(TEACHERS)}). Canonical view {cfg.image_size} px, student `{cfg.model}` "
        f"(`preset=sim`, pixel term x{cfg.pixel_weight:g}), {cfg.steps} steps of {cfg.batch_size} x {cfg.processes} frames on "
        f"{cfg.processes} processes.",
        "",
        f"Training loss: {first:.3f} at step {train[0]['step']} -> {last:.3f} at step {train[-1]['step']}.",
        "",
        f"![loss curve]({curve.name})",
        "",
        "## What z carries (held-out episodes)",
        "",
        *evaluation_lines(result.evaluation, out),
        "",
        "## A held-out episode decoded (rows: student from z alone, teacher)",
        "",
        *[f"- [{v.relative_to(out)}]({v.relative_to(out)})" for v in videos],
        "",
        *[f"![{s.stem}]({s.name})" for s in stills],
        "",
        *(world_model_lines(result) if cfg.world_model_steps > 0 else []),
        "## Steps",
        "",
        "| step | seconds | command |",
        "|---|---|---|",
        *[f"| {s.name} | {s.seconds:.1f} | `{s.command}` |" for s in result.steps],
        f"| all | {result.seconds:.1f} | |",
        "",
        f"Run directory: `{result.run_dir}` (config.yaml, metrics.jsonl, checkpoints/).",
        "",
    ]
    path = out / REPORT_FILE
    atomic_write_text(path, "\n".join(lines))
    return path
