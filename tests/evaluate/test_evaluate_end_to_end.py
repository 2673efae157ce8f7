"""distill.evaluate end to end: PushT episodes -> frame shards with state -> tiny teachers -> a student -> report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distill.distributed import DistContext
from distill.evaluate import EvalConfig, evaluate_student
from distill.evaluate.cli import main as evaluate_main
from distill.evaluate.metrics import psnr
from distill.models.config import StudentConfig
from distill.models.student import Student
from distill.preprocess.calc_stats import StatsConfig, compute_stats
from distill.preprocess.extract import ExtractConfig, TeacherJob, run_extraction
from distill.preprocess.subsample_videos import VideoConfig, subsample_videos
from distill.simulate import EpisodeConfig, render_episodes
from distill.stats import FeatureStats
from distill.teachers import load_teacher

pytest.importorskip("gym_pusht", reason="the PushT simulator is the [sim] extra (make setup installs it)")

TEACHERS = ("dinov2", "mae")


@pytest.fixture(scope="module")
def sim_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sim")
    render_episodes(EpisodeConfig(root / "videos", episodes=8, frames=12, size=64, seed=3))
    dataset = root / "pusht"
    counts = subsample_videos(
        VideoConfig(root / "videos", dataset, size=32, every_n=1, val_fraction=0.3, samples_per_shard=24)
    )
    assert set(counts) == {"train", "val"}, counts  # the path hash sends some episodes to each split
    jobs = tuple(TeacherJob(name, "tiny", None, "fp16") for name in TEACHERS)
    teachers = {name: load_teacher(name, "tiny", device="cpu") for name in TEACHERS}
    run_extraction(ExtractConfig(dataset, jobs, batch_size=16, progress=False), teachers, DistContext())
    compute_stats(StatsConfig(dataset, (), "train", root / "stats"))
    return dataset


@pytest.fixture(scope="module")
def checkpoint(sim_dataset: Path) -> Path:
    stats = {
        name: FeatureStats.load(sim_dataset.parent / "stats" / f"{name}.safetensors") for name in TEACHERS
    }
    specs = {name: load_teacher(name, "tiny").spec for name in TEACHERS}
    config = StudentConfig.from_preset("tiny", specs, image_size=32, patch_size=8, d_z=8)
    torch.manual_seed(0)
    directory = sim_dataset.parent / "student"
    Student(config, load_pretrained=False).save_pretrained(directory, stats)
    return directory


def test_report_scores_z_beside_the_baselines_on_held_out_episodes(
    sim_dataset: Path, checkpoint: Path
) -> None:
    model = Student.from_pretrained(checkpoint)
    report, grid = evaluate_student(model, EvalConfig(sim_dataset, grid_frames=3))
    manifest = json.loads((sim_dataset / "manifest.json").read_text())
    assert report.frames == {
        "train": manifest["splits"]["train"]["count"],
        "eval": manifest["splits"]["val"]["count"],
    }
    # z's pixel figure is what predict(encode(frames)) gives, recomputed here frame by frame.
    frames = grid.images
    expected = psnr(model.predict(model.encode(frames)).pixels.detach(), frames.float() / 255)
    shown = psnr(grid.from_z, frames.float() / 255)
    torch.testing.assert_close(shown, expected)
    # every row of the picture is what it says: the mean image is one image, PCA follows the frame
    assert all(torch.equal(grid.mean[0], m) for m in grid.mean)
    assert not torch.equal(grid.pca[0], grid.pca[1])
    pixels = report.pixels
    assert pixels["pca"]["psnr_mean"] > pixels["mean_image"]["psnr_mean"]  # 8 components beat a constant
    assert pixels["pca"]["psnr_p5"] <= pixels["pca"]["psnr_mean"]
    assert set(report.teachers) == set(TEACHERS)
    assert "cls_cos" in report.teachers["dinov2"] and -1 <= report.teachers["mae"]["patch_cos"] <= 1
    assert set(report.probe) == {"state", "action", "heading"}
    assert len(report.probe["state"]["z"]) == 5 and len(report.probe["state"]["pca"]) == 5
    assert len(report.probe["heading"]["z"]) == 2
    assert {"consecutive_cos", "random_pair_cos"} <= set(report.video)
    assert report.video["z_norm"]["min"] <= report.video["z_norm"]["mean"] <= report.video["z_norm"]["max"]


def test_the_heading_sidecar_is_the_unit_vector_of_the_block_angle(sim_dataset: Path) -> None:
    with np.load(sim_dataset.parent / "videos" / "episode_000002.npz") as sidecar:
        angle, heading = sidecar["state"][:, 4].astype(np.float64), sidecar["heading"]
    np.testing.assert_allclose(heading, np.stack([np.cos(angle), np.sin(angle)], 1), atol=1e-6)
    assert np.ptp(angle) > 0  # the block turns in this episode, so the check sees more than one angle


def test_cli_writes_json_markdown_and_grid(sim_dataset: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert evaluate_main([str(checkpoint), str(sim_dataset), "--output", str(out), "--grid-frames", "2"]) == 0
    report = json.loads((out / "report.json").read_text())
    markdown = (out / "report.md").read_text()
    assert f"{report['pixels']['pca']['psnr_mean']:.2f}" in markdown
    assert "| state[2] |" in markdown and "![held-out frames" in markdown
    with Image.open(out / "grid.png") as picture:
        assert (
            picture.height > 4 * 128 and picture.width > 2 * 128
        )  # 4 rows x 2 frame columns of 128 px cells
