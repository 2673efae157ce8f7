"""Discrete latents: the export writes a quantised student's codes beside z, and the world model learns
the next frame's codes by cross-entropy and rolls out through the student's code table; with keypoints
the codes have two vocabularies (the summary's, then the coordinates' grid)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from latent_helpers import save_tiny_student, write_frames_dataset

from distill.codes import CodeLayout
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
from distill.models.quantize import code_layout
from distill.worldmodel import LatentWorldModel, WorldModelConfig, load_world_model
from distill.worldmodel.train import TrainConfig, next_code_loss, train_world_model

VQ: dict[str, Any] = {"quantizer": "vq", "vq_code_dim": 4, "vq_codebook_size": 16}  # d_z 8: 2 codes of 16
# d_z 8 with one keypoint: a 6-dimensional summary (2 codes of 16), then x and y on a grid of 32 levels
VQ_KEYPOINT: dict[str, Any] = {**VQ, "vq_code_dim": 3, "z_keypoints": 1, "keypoint_levels": 32}
KEYPOINT_LAYOUT = CodeLayout((16, 16, 32, 32), (3, 3, 1, 1))


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Student]:
    root = tmp_path_factory.mktemp("codes")
    frames = write_frames_dataset(root)
    model = save_tiny_student(root / "student", **VQ)
    ref = CheckpointRef.of(root / "student", 8, 32, CodeLayout.uniform(2, 16, 4))
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
    assert model.config.target == "codes" and model.config.layout == CodeLayout.uniform(2, 16, 4)
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


@pytest.fixture(scope="module")
def encoded_keypoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Student]:
    root = tmp_path_factory.mktemp("keypoint_codes")
    frames = write_frames_dataset(root)
    model = save_tiny_student(root / "student", **VQ_KEYPOINT)
    assert code_layout(model.config) == KEYPOINT_LAYOUT
    ref = CheckpointRef.of(root / "student", 8, 32, KEYPOINT_LAYOUT)
    run_encoding(EncodeConfig(root / "student", frames, root / "latents"), model, ref, DistContext())
    return root / "latents", model


def test_codes_of_two_vocabularies_are_exported_with_their_layout(
    encoded_keypoints: tuple[Path, Student],
) -> None:
    latents, model = encoded_keypoints
    manifest = load_latent_manifest(latents)
    assert manifest.checkpoint.layout == KEYPOINT_LAYOUT
    written = json.loads((latents / "latents.json").read_text())["checkpoint"]
    assert (written["vocabularies"], written["widths"]) == ([16, 16, 32, 32], [3, 3, 1, 1])
    table = read_code_table(latents, manifest.checkpoint)
    assert table.shape == (4, 32, 3)
    batch = LatentClips(latents, history=3, horizon=1).collate(range(len(LatentClips(latents, history=3))))
    assert batch.codes is not None
    codes, z = batch.codes.flatten(0, 1), batch.z.flatten(0, 1)
    assert int(codes[:, :2].max()) < 16 and int(codes[:, 2:].max()) < 32
    with torch.no_grad():
        assert torch.equal(model.codes_to_z(codes), z)
    assert torch.equal(KEYPOINT_LAYOUT.lookup(table, codes), z)  # the table alone gives z back, bit for bit


def test_old_manifests_and_world_model_configs_read_as_one_vocabulary() -> None:
    ref = CheckpointRef.from_dict(
        {
            "path": "/x",
            "config_sha256": "a",
            "weights_sha256": "b",
            "d_z": 8,
            "image_size": 32,
            "codes": 2,
            "vocabulary": 16,
        }
    )
    assert ref.layout == CodeLayout.uniform(2, 16, 4) and (ref.codes, ref.vocabulary) == (2, 16)
    assert CheckpointRef.from_dict({**ref.to_dict()}) == ref
    config = WorldModelConfig.from_dict(
        {"d_z": 8, "action_dim": 0, "action": None, "target": "codes", "codes": 2, "vocabulary": 16}
    )
    assert config.layout == CodeLayout.uniform(2, 16, 4)
    assert WorldModelConfig.from_dict(config.to_dict()) == config


def test_the_world_model_masks_the_values_a_code_cannot_take(
    encoded_keypoints: tuple[Path, Student], tmp_path: Path
) -> None:
    latents, _ = encoded_keypoints
    cfg = TrainConfig(
        latents,
        tmp_path / "wm",
        history=3,
        width=32,
        heads=2,
        steps=40,
        batch_size=16,
        log_every=20,
        target="codes",
    )
    train_world_model(cfg)
    model, _ = load_world_model(tmp_path / "wm")
    assert model.config.layout == KEYPOINT_LAYOUT
    batch = LatentClips(latents, history=3, horizon=1, arrays=["action"]).collate(range(4))
    assert batch.codes is not None
    z, actions = batch.z, batch.arrays["action"]
    with torch.no_grad():
        logits = model.code_logits(z[:, :3], actions[:, :3])  # [4, 3, 4 codes, 32]
        predicted = model(z[:, :3], actions[:, :3])
    impossible = torch.zeros(4, 32, dtype=torch.bool)
    impossible[:2, 16:] = True  # the summary's codes have 16 values, the coordinates 32
    assert torch.equal(torch.isneginf(logits), impossible.expand_as(logits))
    codes = logits.argmax(-1)
    assert int(codes[..., :2].max()) < 16
    table = read_code_table(latents, load_latent_manifest(latents).checkpoint)
    assert torch.equal(predicted, KEYPOINT_LAYOUT.lookup(table, codes))  # rollouts stay on the codes
    # the loss is each code's cross-entropy over its own vocabulary
    loss = next_code_loss(model, z, batch.codes, actions)
    own = torch.stack(
        [
            F.cross_entropy(
                logits[:, :, i, :v].flatten(0, 1), batch.codes[:, 1:, i].flatten(), reduction="none"
            )
            for i, v in enumerate(KEYPOINT_LAYOUT.vocabularies)
        ]
    )
    torch.testing.assert_close(loss, own.mean(), rtol=1e-6, atol=0)
    planted = batch.codes.clone()
    planted[1, 2, 0] = 20  # a coordinate's value, impossible for a summary code
    with pytest.raises(ValueError, match=r"code 0 must lie in \[0, 16\)"):
        next_code_loss(model, z, planted, actions)
    fresh = LatentWorldModel(model.config).train()  # masked logits give finite gradients
    next_code_loss(fresh, z, batch.codes, actions).backward()
    assert fresh.head.weight.grad is not None and bool(torch.isfinite(fresh.head.weight.grad).all())
    assert float(fresh.head.weight.grad.abs().sum()) > 0
