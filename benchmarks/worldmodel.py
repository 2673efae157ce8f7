"""The latent world model against copy-last-frame on held-out PushT episodes, with a trained student, on CPU.

PushT episodes (gym-pusht) -> frames with per-frame state and action -> the five tiny teachers ->
a ``preset=sim`` student trained for ``--student-steps`` (latent_quality.py's data and recipe) ->
``distill-encode`` of every episode -> the world model trained for ``--steps`` on the train episodes
-> open-loop rollouts on the held-out episodes: z cosine, centred cosine and pixel PSNR per horizon
step for the world model, copy-last-frame and the true frame's own z, and the first held-out rollouts
decoded to MP4 and a PNG strip (copied to ``--pictures``). Data and student are kept in ``--work`` and
reused by a rerun. A fifth of the episodes is held out; far fewer than the default 400 episodes leave the
world model too few windows: it memorises them and falls below copy-last (docs/decisions.md).

    python benchmarks/worldmodel.py --work /tmp/wm-bench
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from common import base_parser, write_result
from distill.encode import EncodeConfig, encode_latents
from distill.worldmodel import RolloutConfig, TrainConfig, evaluate_rollouts, train_world_model
from latent_quality import REPO, build_dataset, point, pusht_setup, train

D_Z = 32  # the demo's student


def main() -> int:
    parser = base_parser("worldmodel", __doc__)
    parser.add_argument("--work", type=Path, required=True, help="folder for the episodes, dataset and runs")
    parser.add_argument(
        "--episodes", type=int, default=400, help="a fifth held out; fewer overfit the world model"
    )
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=800, help="student training steps")
    parser.add_argument("--wm-steps", type=int, default=2000, help="world-model training steps")
    parser.add_argument("--history", type=int, default=4)
    parser.add_argument("--horizon", type=int, default=5)
    parser.add_argument(
        "--pictures", type=Path, default=REPO / "docs" / "images", help="the PNG strips are copied here"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    dataset = build_dataset(args.work, args.episodes, args.frames, args.size)
    data_seconds = time.perf_counter() - started
    student = train(dataset, args.work, D_Z, args.steps, name=f"student{args.steps}")
    student_seconds = time.perf_counter() - started - data_seconds
    quality = point(dataset, student, D_Z)
    latents, model, rollouts = (args.work / name for name in ("latents", "wm", "rollouts"))
    encode_latents(EncodeConfig(student, dataset, latents, device="cpu", overwrite=True))
    wm_started = time.perf_counter()
    trained = train_world_model(
        TrainConfig(latents, model, history=args.history, steps=args.wm_steps, log_every=100)
    )
    wm_seconds = time.perf_counter() - wm_started
    metrics = evaluate_rollouts(
        RolloutConfig(
            model, latents, rollouts, "val", args.horizon, student, videos=2, teachers_source="tiny"
        )
    )
    strips = sorted(rollouts.glob("rollout_*.png"))
    args.pictures.mkdir(parents=True, exist_ok=True)
    for strip in strips:
        shutil.copyfile(strip, args.pictures / f"worldmodel_{strip.name}")
    result = {
        "setup": pusht_setup(
            args,
            f"student: preset=sim model.d_z={D_Z} training.steps={args.steps}, one CPU thread; world model: "
            f"width 128, depth 2, dropout 0.1, weight decay 0.05, history {args.history}, {args.wm_steps} steps of 64 windows",
        ),
        "student": {
            "psnr_z": quality["pixels"]["z"]["psnr_mean"],
            "psnr_mean_image": quality["pixels"]["mean_image"]["psnr_mean"],
            "train_seconds": quality["train_seconds"],
        },
        "world_model_loss": trained["loss"],
        "seconds": {
            "data": round(data_seconds, 1),
            "student": round(student_seconds, 1),
            "world_model_train": round(wm_seconds, 1),
            "all": round(time.perf_counter() - started, 1),
        },
        **metrics.to_dict(),
        "rollout_strips": [f"worldmodel_{strip.name}" for strip in strips],
    }
    write_result(args.output, result)
    print(json.dumps({k: result[k] for k in ("cosine", "psnr")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
