"""`make demo` at a reduced size: every real step (simulation, subsample_videos, torchrun extraction and
training, stats, check, evaluation, decoding, encoding to z, a world model and its rollout) and the report, asserted on what a newcomer would look at."""

from __future__ import annotations

import json
import math
from pathlib import Path

import av
import pytest
from PIL import Image

from distill.data.latents import load_latent_manifest
from distill.decode.grid import cell_size
from distill.demo.__main__ import main
from distill.demo.pipeline import WORLD_MODEL_HISTORY, DemoConfig, DemoResult, run_demo
from distill.demo.report import horizons_text, loss_series, write_report
from distill.worldmodel import load_world_model

pytestmark = pytest.mark.slow
HELD_OUT = "episode_000007"  # of episodes 0-7, the one whose name hashes into the val split


def test_demo_pipeline_end_to_end(tmp_path: Path) -> None:
    cfg = DemoConfig(
        output=tmp_path, episodes=8, frames=10, steps=60, batch_size=8, world_model_steps=20, horizon=3
    )
    result = run_demo(cfg)
    report = write_report(result)

    manifest = json.loads((result.dataset / "manifest.json").read_text())
    assert manifest["kind"] == "videos"
    assert {name: split["count"] for name, split in manifest["splits"].items()} == {"train": 70, "val": 10}
    assert set(manifest["teachers"]) == {"clip", "dinov2", "mae", "sam", "depth_anything"}
    assert sorted(p.stem for p in result.stats_dir.glob("*.safetensors")) == sorted(manifest["teachers"])

    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in records if r["kind"] == "train") == cfg.steps
    assert any(r["kind"] == "val" for r in records)
    assert "z_keypoints: 4" in (result.run_dir / "config.yaml").read_text()  # preset=sim

    assert result.held_out == result.videos / f"{HELD_OUT}.mp4"
    with av.open(str(result.decoded / f"{HELD_OUT}.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == 10  # the simulator's control rate
        assert sum(1 for _ in container.decode(stream)) == cfg.frames

    text = report.read_text()
    assert "![loss curve](loss_curve.png)" in text and f"decoded/{HELD_OUT}.mp4" in text
    for line in text.splitlines():
        if line.startswith("!["):
            assert (tmp_path / line.split("(")[1].rstrip(")")).is_file(), line
    assert Image.open(tmp_path / "loss_curve.png").size == (640, 400)
    names = [s.name for s in result.steps]
    assert names[-4] == "decode a held-out episode: student vs teachers"
    assert names[-1] == "roll the world model out on the held-out episodes, against copy-last-frame"

    evaluation = json.loads((result.evaluation / "report.json").read_text())
    assert evaluation["frames"] == {"train": 70, "eval": 10}
    pixels = evaluation["pixels"]
    for row, name in (("decoded from z", "z"), ("mean image", "mean_image")):
        assert f"| {row} | {pixels[name]['psnr_mean']:.2f} |" in text  # the report carries the table
    assert pixels["z"]["psnr_mean"] > pixels["mean_image"]["psnr_mean"]  # z carries more than the mean frame
    probe = evaluation["probe"]
    assert (len(probe["state"]["z"]), len(probe["action"]["z"])) == (5, 2)  # the simulator's sidecar rows
    assert f"| state[2] | {probe['state']['z'][2]:.3f} |" in text
    assert (result.student / "config.json").is_file() and (result.student / "model.safetensors").is_file()
    assert_world_model_step(result, text)


def assert_world_model_step(result: DemoResult, text: str) -> None:
    """The latents of every episode, the trained world model, and the scored, decoded held-out rollout."""
    cfg = result.config
    latents = load_latent_manifest(result.latents)
    assert {split: [n for _, n in videos] for split, videos in latents.splits.items()} == {
        "train": [cfg.frames] * 7,
        "val": [cfg.frames],
    }
    assert latents.checkpoint.d_z == 32 and latents.arrays == {"action": 2, "heading": 2, "state": 5}
    model, _ = load_world_model(result.world_model)
    assert (model.config.history, model.config.action_dim) == (WORLD_MODEL_HISTORY, 2)
    log = [json.loads(line) for line in (result.world_model / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == cfg.world_model_steps and math.isfinite(log[-1]["loss"])

    metrics = json.loads((result.rollouts / "metrics.json").read_text())
    assert metrics["windows"] == cfg.frames - WORLD_MODEL_HISTORY - cfg.horizon + 1  # one held-out episode
    for table in ("cosine", "psnr"):
        for name, values in metrics[table].items():
            assert len(values) == cfg.horizon and all(map(math.isfinite, values)), (table, name)
    assert set(metrics["psnr"]) == {"world_model", "copy_last", "encoded"}
    assert (
        f"| t+1 | {metrics['cosine']['world_model'][0]:.3f} | {metrics['cosine']['copy_last'][0]:.3f} |"
        in text
    )
    cosine = metrics["cosine"]
    ahead = [h + 1 for h in range(cfg.horizon) if cosine["world_model"][h] > cosine["copy_last"][h]]
    assert f"above copy-last-frame's {horizons_text(ahead)} of 1-{cfg.horizon}." in text
    with av.open(str(result.rollouts / f"rollout_{HELD_OUT}.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == cfg.horizon  # one grid per imagined step
    assert f"](rollouts/rollout_{HELD_OUT}.png)" in text
    strip = Image.open(result.rollouts / f"rollout_{HELD_OUT}.png")
    cell = cell_size(cfg.image_size, 96)
    assert strip.width >= cfg.horizon * cell and strip.height >= 4 * cell  # horizon columns, four rows


def test_horizons_text_reads_as_a_sentence() -> None:
    assert (horizons_text([]), horizons_text([2]), horizons_text([1, 4])) == (
        "at no horizon",
        "at horizons 2",
        "at horizons 1, 4",
    )


def test_a_world_model_step_longer_than_the_episodes_is_refused_before_any_step(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="at least 9 frames"):
        run_demo(DemoConfig(output=tmp_path, frames=8))
    assert not any(tmp_path.iterdir())


def test_loss_series_keeps_train_terms_and_validation_loss() -> None:
    records: list[dict[str, float | str]] = [
        {"kind": "train", "step": 1, "loss": 3.0, "sam/total": 1.0, "sam/patch_cos": 0.5},
        {"kind": "val", "step": 1, "loss": 2.5, "sam/total": 0.9},
    ]
    assert loss_series(records) == {
        "train/loss": [(1.0, 3.0)],
        "train/sam/total": [(1.0, 1.0)],
        "val/loss": [(1.0, 2.5)],
    }


def test_bad_weights_argument_names_the_expected_form() -> None:
    with pytest.raises(SystemExit, match="expected NAME=WEIGHTS"):
        main(["--teachers", "hub", "--weights", "sam"])


def test_weights_with_tiny_teachers_are_refused_before_any_step(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="add --teachers hub or drop --weights"):
        main(["--output", str(tmp_path), "--weights", "sam=vit_h:/models/sam.pth"])
    assert not any(tmp_path.iterdir())
