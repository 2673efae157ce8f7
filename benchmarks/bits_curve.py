"""Bits per frame against fidelity: FSQ and VQ students beside continuous z of the same width and PCA.

The data of latent_quality.py (PushT episodes, the five tiny teachers' int8 features) and the recipe of
``make demo``: ``preset=sim`` (the tiny student with 4 keypoints in z drawn back as heatmaps and sprites,
a 96-wide decoder, all five teachers' terms on) with the demo's short-run overrides (pixel term x4,
warmup a tenth of the run). Every point is one run of ``--steps`` steps at ``--batch`` frames, the same
for all, then ``distill.evaluate`` on the held-out episodes (pixel PSNR through z, every teacher's
cosine from z, the mean image and PCA of the same width). With a quantiser, z's summary (d_z - 8
dimensions) becomes the FSQ/VQ codes and each of the 8 keypoint coordinates one code of
``model.keypoint_levels`` grid cells, so a point is worth ``sum(log2(vocabulary_i))`` bits per frame;
continuous z and PCA are drawn as lines across the plot (their float32 values are 32 bits per dimension).

    python benchmarks/bits_curve.py --work /tmp/bits2 --parallel 1
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import base_parser, write_result
from distill.demo.plot import line_plot
from distill.models.checkpoint import read_config
from distill.models.quantize import code_layout
from latent_quality import build_dataset, plot_path, point, pusht_setup, run_arguments, train

# name -> model overrides; "z": continuous z. At d_z = 32 the summary is 24 dimensions (6 codes of 4) and
# the 8 keypoint coordinates are 8 codes of 64 levels (48 bits) unless the setting says otherwise.
SETTINGS: dict[str, tuple[str, ...]] = {
    "z": (),
    "fsq-2222-kp16": ("model.quantizer=fsq", "model.fsq_levels=[2,2,2,2]", "model.keypoint_levels=16"),
    "fsq-2222": ("model.quantizer=fsq", "model.fsq_levels=[2,2,2,2]"),
    "fsq-5555": ("model.quantizer=fsq", "model.fsq_levels=[5,5,5,5]"),
    "vq-16": ("model.quantizer=vq", "model.vq_code_dim=4", "model.vq_codebook_size=16"),
    "vq-256": ("model.quantizer=vq", "model.vq_code_dim=4", "model.vq_codebook_size=256"),
}


def bits_per_frame(student: Path) -> dict[str, Any] | None:
    """Bits per frame of a trained student's codes, all and the keypoints' share, and the code layout;
    None for continuous z."""
    config = read_config(student)
    layout = code_layout(config)
    if layout is None:
        return None
    coordinates = 2 * config.z_keypoints
    return {
        "total": layout.bits_per_frame,
        "keypoints": coordinates * math.log2(config.keypoint_levels),
        "layout": layout.to_dict(),
    }


def codebook_use(student: Path) -> dict[str, float]:
    """``codes/perplexity`` and ``codes/dead`` of the run's last validation (empty for continuous z)."""
    lines = (student.parent / "metrics.jsonl").read_text().splitlines()
    last = [record for record in map(json.loads, lines) if record["kind"] == "val"][-1]
    return {key: value for key, value in last.items() if key.startswith("codes/")}


def mean_patch_cos(entry: dict[str, Any]) -> float:
    return sum(t["patch_cos"] for t in entry["teachers"].values()) / len(entry["teachers"])


def draw(points: list[dict[str, Any]], d_z: int, path: Path) -> None:
    """PSNR (``path``) and mean teacher patch cosine (``<path>_cosine.png``) against bits per frame;
    continuous z, PCA and the mean image as flat lines across the quantised points' range."""
    quantised = sorted(
        (p for p in points if p["bits_per_frame"] is not None), key=lambda p: p["bits_per_frame"]["total"]
    )
    low, high = quantised[0]["bits_per_frame"]["total"], quantised[-1]["bits_per_frame"]["total"]
    pad = max(8.0, 0.1 * (high - low))  # the flat lines reach past the points, also when all share one rate
    span = [low - pad, high + pad]
    psnr: dict[str, list[tuple[float, float]]] = {}
    cosine: dict[str, list[tuple[float, float]]] = {}
    for kind in ("fsq", "vq"):
        chosen = [p for p in quantised if p["setting"].startswith(kind)]
        psnr[kind.upper()] = [(p["bits_per_frame"]["total"], p["pixels"]["z"]["psnr_mean"]) for p in chosen]
        cosine[kind.upper()] = [(p["bits_per_frame"]["total"], mean_patch_cos(p)) for p in chosen]
    for p in points:
        if p["bits_per_frame"] is None:
            psnr[f"continuous z, d_z={d_z}"] = [(x, p["pixels"]["z"]["psnr_mean"]) for x in span]
            cosine[f"continuous z, d_z={d_z}"] = [(x, mean_patch_cos(p)) for x in span]
    psnr[f"PCA({d_z})"] = [(x, points[0]["pixels"]["pca"]["psnr_mean"]) for x in span]
    psnr["mean image"] = [(x, points[0]["pixels"]["mean_image"]["psnr_mean"]) for x in span]
    line_plot(psnr, path, title="held-out PushT: PSNR (dB) through z against bits per frame")
    line_plot(
        cosine,
        path.with_name(path.stem + "_cosine.png"),
        title="held-out PushT: mean teacher patch cosine from z against bits per frame",
    )


def main() -> int:
    parser = base_parser("bits_curve", __doc__)
    run_arguments(parser, episodes=50, steps=600)  # 50: 8 train shards for 8 streams
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--dz", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    dataset = build_dataset(args.work, args.episodes, args.frames, args.size)
    recipe = (  # preset=sim (train() adds it) with make demo's overrides (distill/demo/pipeline.py)
        f"training.batch_size={args.batch}",
        "training.calibration_batches=4",
        f"training.warmup_steps={max(1, args.steps // 10)}",
        f"training.val_every={max(1, args.steps // 4)}",
        "training.loss.pixel_mse=4",
        "logging.log_every=10",
    )

    def run(name: str) -> Path:
        return train(dataset, args.work, args.dz, args.steps, name, recipe + SETTINGS[name])

    with ThreadPoolExecutor(args.parallel) as pool:
        students = dict(zip(args.settings, pool.map(run, args.settings), strict=True))
    points = []
    for name, student in students.items():
        entry = point(dataset, student, args.dz)
        use = codebook_use(student)
        points.append({"setting": name, "bits_per_frame": bits_per_frame(student), "codebook": use, **entry})
    draw(points, args.dz, plot_path(args, "bits_curve", "bits_curve.png"))
    result = {
        "setup": pusht_setup(
            args,
            f"preset=sim model.d_z={args.dz} training.steps={args.steps} training.batch_size={args.batch} "
            f"training.warmup_steps={max(1, args.steps // 10)} training.loss.pixel_mse=4 (make demo's "
            "overrides), one CPU thread per run",
        )
        | {"settings": {name: list(SETTINGS[name]) for name in args.settings}},
        "points": points,
    }
    write_result(args.output, result)
    summary = [
        {
            "setting": p["setting"],
            "bits": None if p["bits_per_frame"] is None else round(p["bits_per_frame"]["total"], 1),
            "psnr": round(p["pixels"]["z"]["psnr_mean"], 2),
            "pca": round(p["pixels"]["pca"]["psnr_mean"], 2),
            "cos": round(mean_patch_cos(p), 4),
        }
        for p in points
    ]
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
