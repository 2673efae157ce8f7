"""The latent world model: its rollout is what its forward pass says, untrained it is copy-last, and the
whole path (PushT -> frames -> latents -> training -> held-out rollouts decoded) runs end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import av
import pytest
import torch
from latent_helpers import save_tiny_student, write_frames_dataset

from distill.data.latent_clips import LatentClips
from distill.data.latents import CheckpointRef
from distill.distributed import DistContext
from distill.encode import EncodeConfig, encode_latents, run_encoding
from distill.preprocess.subsample_videos import VideoConfig, subsample_videos
from distill.worldmodel import (
    LatentWorldModel,
    RolloutConfig,
    TrainConfig,
    WorldModelConfig,
    evaluate_rollouts,
    load_world_model,
    train_world_model,
)
from distill.worldmodel.rollout import imagine, rollout_metrics


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> LatentClips:
    root = tmp_path_factory.mktemp("wm")
    frames = write_frames_dataset(root)
    model = save_tiny_student(root / "student")
    ref = CheckpointRef.of(root / "student", 8, 32)
    run_encoding(EncodeConfig(root / "student", frames, root / "latents"), model, ref, DistContext())
    return LatentClips(root / "latents", history=3, horizon=4, arrays=["action"])


def test_rollout_feeds_its_own_predictions_back(clips: LatentClips) -> None:
    torch.manual_seed(0)
    model = LatentWorldModel(WorldModelConfig(8, 2, history=3, width=32, heads=2))
    torch.nn.init.normal_(model.head.weight, std=0.5)  # a non-trivial model
    batch = clips.collate(range(4))
    z, actions = batch.z, batch.arrays["action"]
    rolled = model.rollout(z[:, :3], actions, steps=2)
    with torch.no_grad():
        first = model(z[:, :3], actions[:, :3])[:, -1]
        second = model(torch.cat([z[:, 1:3], first[:, None]], 1), actions[:, 1:4])[:, -1]
    torch.testing.assert_close(rolled[:, 0], first)
    torch.testing.assert_close(rolled[:, 1], second)
    assert not torch.allclose(first, z[:, 2])


def test_an_untrained_model_is_the_copy_last_baseline(clips: LatentClips) -> None:
    """The head starts at zero: predicting no change must score exactly like copying the last z."""
    model = LatentWorldModel(WorldModelConfig(8, 2, history=3, width=32, heads=2)).eval()
    imagined = imagine(model, clips.collate(range(len(clips))), 4)
    torch.testing.assert_close(imagined["world_model"], imagined["copy_last"])
    metrics = rollout_metrics(model, clips, 4)
    assert metrics.windows == len(clips) and metrics.cosine["world_model"] == metrics.cosine["copy_last"]
    assert metrics.centered_cosine["world_model"] == metrics.centered_cosine["copy_last"]


def _small(clips: LatentClips, output: Path, **options: Any) -> TrainConfig:
    """8 steps of 4 windows, a loss logged every 2 steps."""
    fields = {"history": 3, "width": 32, "heads": 2, "steps": 8, "batch_size": 4, "log_every": 2, "lr": 1e-2}
    return TrainConfig(clips.root, output, **(fields | options))


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(
    clips: LatentClips, tmp_path: Path
) -> None:
    """Kill after the step-4 checkpoint of 8 (its later checkpoint and final folder gone, an interrupted
    write left behind), resume: the same weights, bit for bit, and the same loss log."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train_world_model(_small(clips, whole))
    train_world_model(_small(clips, cut, checkpoint_every=4, keep_last=0))
    for name in ("model.safetensors", "config.json", "train_log.jsonl"):
        (cut / name).unlink()
    shutil.rmtree(cut / "checkpoints" / "step_00000008")
    (cut / "checkpoints" / ".tmp-step_00000008-123").mkdir()
    halfway, _ = load_world_model(cut / "checkpoints" / "step_00000004" / "worldmodel")
    with pytest.raises(ValueError, match="pass --resume"):
        train_world_model(_small(clips, cut, checkpoint_every=4))
    train_world_model(_small(clips, cut, checkpoint_every=4, resume=True))
    assert not (cut / "checkpoints" / ".tmp-step_00000008-123").exists()
    expected, resumed = load_world_model(whole)[0].state_dict(), load_world_model(cut)[0].state_dict()
    assert expected.keys() == resumed.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, resumed[name]), name
    assert not torch.equal(halfway.state_dict()["head.weight"], expected["head.weight"])  # it trained on
    assert (cut / "train_log.jsonl").read_text() == (whole / "train_log.jsonl").read_text()


def test_resuming_with_another_batch_size_is_refused(clips: LatentClips, tmp_path: Path) -> None:
    train_world_model(_small(clips, tmp_path, steps=4, checkpoint_every=2))
    with pytest.raises(ValueError, match="resume with --batch-size 4"):
        train_world_model(_small(clips, tmp_path, steps=4, checkpoint_every=2, batch_size=8, resume=True))


@pytest.fixture(scope="module")
def pusht(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("gym_pusht", reason="the PushT simulator is the [sim] extra (make setup installs it)")
    from distill.simulate import EpisodeConfig, render_episodes

    root = tmp_path_factory.mktemp("pusht")
    render_episodes(EpisodeConfig(root / "videos", episodes=8, frames=16, size=64, seed=5))
    counts = subsample_videos(
        VideoConfig(root / "videos", root / "frames", size=32, every_n=1, val_fraction=0.3)
    )
    assert set(counts) == {"train", "val"}, counts
    return root


def test_pusht_to_latents_to_world_model_to_decoded_rollouts(pusht: Path) -> None:
    save_tiny_student(pusht / "student")
    out = pusht / "out"
    encode_latents(EncodeConfig(pusht / "student", pusht / "frames", out / "latents", device="cpu"))
    train_world_model(TrainConfig(out / "latents", out / "worldmodel", steps=60, batch_size=32))
    rollouts = RolloutConfig(
        out / "worldmodel", out / "latents", out / "rollouts", horizon=3, student=pusht / "student"
    )
    metrics = evaluate_rollouts(rollouts)
    assert metrics.windows > 0 and len(metrics.cosine["world_model"]) == 3
    assert set(metrics.psnr) == {"world_model", "copy_last", "encoded"}
    saved = json.loads((pusht / "out" / "rollouts" / "metrics.json").read_text())
    assert saved["cosine"] == metrics.cosine
    model, fingerprint = load_world_model(pusht / "out" / "worldmodel")
    assert (
        model.config.action_dim == 2 and fingerprint == CheckpointRef.of(pusht / "student", 8, 32).fingerprint
    )
    videos = sorted((pusht / "out" / "rollouts").glob("rollout_*.mp4"))
    assert videos and len(list((pusht / "out" / "rollouts").glob("rollout_*.png"))) == len(videos)
    with av.open(str(videos[0])) as container:
        assert sum(1 for _ in container.decode(video=0)) == 3  # one grid per imagined step
