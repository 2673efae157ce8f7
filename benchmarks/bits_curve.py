"""Bits per frame against fidelity: FSQ and VQ students beside continuous z of the same width and PCA.

The data and recipe of latent_quality.py (PushT episodes, the five tiny teachers' int8 features,
``model=tiny training=sim``, all five teachers' terms on), shortened so the whole curve fits a
modest CPU budget: every point is one run of ``--steps`` steps at ``--batch`` frames, the same
for all, then ``distill.evaluate`` on the held-out episodes (pixel PSNR through z, every
teacher's cosine from z, the mean image and PCA of the same width). A quantised point is worth
``codes * log2(vocabulary)`` bits per frame; continuous z and PCA are drawn as lines across the
plot (their float32 values are 32 bits per dimension).

    python benchmarks/bits_curve.py --work /tmp/bits --steps 250
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
from latent_quality import build_dataset, point, pusht_setup, run_arguments, train

# name -> model overrides (at d_z = 16 each setting makes 4 codes of 4 dimensions); "z": continuous z
SETTINGS: dict[str, tuple[str, ...]] = {
    "z": (),
    "fsq-2222": ("model.quantizer=fsq", "model.fsq_levels=[2,2,2,2]"),
    "fsq-3333": ("model.quantizer=fsq", "model.fsq_levels=[3,3,3,3]"),
    "fsq-5555": ("model.quantizer=fsq", "model.fsq_levels=[5,5,5,5]"),
    "vq-16": ("model.quantizer=vq", "model.vq_code_dim=4", "model.vq_codebook_size=16"),
    "vq-256": ("model.quantizer=vq", "model.vq_code_dim=4", "model.vq_codebook_size=256"),
}


def bits_per_frame(student: Path) -> float | None:
    """``codes * log2(vocabulary)`` of a trained student's quantiser; None for continuous z."""
    layout = code_layout(read_config(student))
    return None if layout is None else layout[0] * math.log2(layout[1])


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
        (p for p in points if p["bits_per_frame"] is not None), key=lambda p: p["bits_per_frame"]
    )
    span = [quantised[0]["bits_per_frame"], quantised[-1]["bits_per_frame"]]
    psnr: dict[str, list[tuple[float, float]]] = {}
    cosine: dict[str, list[tuple[float, float]]] = {}
    for kind in ("fsq", "vq"):
        chosen = [p for p in quantised if p["setting"].startswith(kind)]
        psnr[kind.upper()] = [(p["bits_per_frame"], p["pixels"]["z"]["psnr_mean"]) for p in chosen]
        cosine[kind.upper()] = [(p["bits_per_frame"], mean_patch_cos(p)) for p in chosen]
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
    run_arguments(parser, episodes=50, steps=250, plot="bits_curve.png")  # 50: 8 train shards for 8 streams
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--dz", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    dataset = build_dataset(args.work, args.episodes, args.frames, args.size)
    recipe = (
        f"model.d_z={args.dz}",
        f"training.batch_size={args.batch}",
        "training.calibration_batches=4",
        # preset=sim without its keypoints (and their sprites) and wider decoder: the recipe this curve
        # was measured with (a quantiser would round the keypoint positions)
        "model.z_keypoints=0",
        "model.keypoint_sprites=false",
        "model.decoder_dim=null",
        "model.decoder_heads=null",
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
    draw(points, args.dz, args.plot)
    result = {
        "setup": pusht_setup(
            args,
            f"model=tiny training=sim model.d_z={args.dz} training.steps={args.steps} "
            f"training.batch_size={args.batch}, one CPU thread per run",
        )
        | {"settings": {name: list(SETTINGS[name]) for name in args.settings}},
        "points": points,
    }
    write_result(args.output, result)
    summary = [
        {
            "setting": p["setting"],
            "bits": p["bits_per_frame"],
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
