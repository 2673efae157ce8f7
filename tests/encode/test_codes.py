"""Discrete latents: the export writes a quantised student's codes beside z, and the world model learns
the next frame's codes by cross-entropy and rolls out through the student's code table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from latent_helpers import save_tiny_student, write_frames_dataset

from distill.data.clips import video_clips
from distill.data.latent_clips import LatentClips
from distill.data.latents import (
    CheckpointRef,
    load_latent_manifest,
    read_code_table,
    read_video_latents,
    video_path,
)
from distill.decode import PIXEL_HEAD, decode_z
from distill.distributed import DistContext
from distill.encode import EncodeConfig, run_encoding
from distill.models import Student
from distill.worldmodel import load_world_model
from distill.worldmodel.train import TrainConfig, train_world_model

VQ: dict[str, Any] = {"quantizer": "vq", "vq_code_dim": 4, "vq_codebook_size": 16}  # d_z 8: 2 codes of 16


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Student]:
    root = tmp_path_factory.mktemp("codes")
    frames = write_frames_dataset(root)
    model = save_tiny_student(root / "student", **VQ)
    ref = CheckpointRef.of(root / "student", 8, 32, codes=2, vocabulary=16)
    run_encoding(EncodeConfig(root / "student", frames, root / "latents"), model, ref, DistContext())
    return root / "latents", frames, model


def test_the_export_writes_each_frames_codes_and_z_is_what_they_stand_for(
    encoded: tuple[Path, Path, Student],
) -> None:
    latents, frames, model = encoded
    manifest = load_latent_manifest(latents)
    assert (manifest.checkpoint.codes, manifest.checkpoint.vocabulary) == (2, 16)
    assert json.loads((latents / "latents.json").read_text())["checkpoint"]["codes"] == 2
    clips = list(video_clips(frames, "train", clip_len=2**31 - 1, allow_short=True))
    assert clips
    for clip in clips:
        video = read_video_latents(
            video_path(latents, "train", clip.video_id), manifest.checkpoint.fingerprint
        )
        assert video.codes is not None and video.codes.dtype == torch.int64
        with torch.no_grad():
            assert torch.equal(video.codes, model.encode(clip.frames, codes=True))
            assert torch.equal(video.z, model.codes_to_z(video.codes))
    assert model.quantizer is not None
    assert torch.equal(read_code_table(latents, manifest.checkpoint), model.quantizer.table())
    batch = LatentClips(latents, history=3, horizon=1).collate(range(3))
    assert batch.codes is not None and batch.codes.shape == (3, 4, 2)
    with torch.no_grad():
        assert torch.equal(model.codes_to_z(batch.codes.flatten(0, 1)), batch.z.flatten(0, 1))
    loaded = Student.from_pretrained(latents.parent / "student")  # with its stats, as decode_z needs
    assert video.codes is not None
    from_codes, from_z = (decode_z(loaded, x, "pca,pixels") for x in (video.codes, video.z))
    assert torch.equal(from_codes.pixels[PIXEL_HEAD], from_z.pixels[PIXEL_HEAD])
    assert torch.equal(from_codes.pca["dinov2"], from_z.pca["dinov2"])


def test_the_world_model_learns_codes_by_cross_entropy(
    encoded: tuple[Path, Path, Student], tmp_path: Path
) -> None:
    latents, _, _ = encoded
    cfg = TrainConfig(
        latents, tmp_path / "wm", history=3, width=32, heads=2, steps=60, batch_size=16, log_every=20
    )
    result = train_world_model(TrainConfig(**{**cfg.__dict__, "target": "codes"}))
    log = [json.loads(line) for line in (tmp_path / "wm" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"] < 2 * torch.log(torch.tensor(16.0)).item()
    assert result["steps"] == 60
    model, _ = load_world_model(tmp_path / "wm")
    assert model.config.target == "codes" and (model.config.codes, model.config.vocabulary) == (2, 16)
    batch = LatentClips(latents, history=3, horizon=1, arrays=["action"]).collate(range(4))
    z, actions = batch.z[:, :3], batch.arrays["action"][:, :3]
    with torch.no_grad():
        predicted = model(z, actions)
        codes = model.code_logits(z, actions).argmax(-1)
    table = read_code_table(latents, load_latent_manifest(latents).checkpoint)
    assert torch.equal(predicted, table[torch.arange(2), codes].flatten(-2))  # rollouts stay on the codes


def test_codes_need_latents_of_a_quantised_student(tmp_path: Path) -> None:
    frames = write_frames_dataset(tmp_path, frames=(9,))
    model = save_tiny_student(tmp_path / "student")
    ref = CheckpointRef.of(tmp_path / "student", 8, 32)
    run_encoding(EncodeConfig(tmp_path / "student", frames, tmp_path / "latents"), model, ref, DistContext())
    with pytest.raises(
        ValueError, match=r"continuous z only: encode it with a student trained with model\.quantizer"
    ):
        train_world_model(TrainConfig(tmp_path / "latents", tmp_path / "wm", history=3, target="codes"))
