"""V-JEPA 2 teacher: clips in frame order, one target per frame, short videos, strict loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from teacher_helpers import assert_same_teacher, scene_batch

from distill.teachers import dinov2, load_teacher
from distill.teachers.vjepa2 import VJepa2Teacher, clip_windows


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    """Ten distinct frames of one 'video', uint8 [10, 3, 64, 64]."""
    return scene_batch(10, seed=7)


def test_clip_windows_cover_every_frame_with_full_clips() -> None:
    assert clip_windows(8, 4) == [(0, 4), (4, 8)]
    assert clip_windows(10, 4) == [(0, 4), (4, 8), (6, 10)]  # the last clip ends the video
    assert clip_windows(3, 4) == [(0, 3)] and clip_windows(1, 4) == [(0, 1)]
    with pytest.raises(ValueError, match="at least one frame"):
        clip_windows(0, 4)


def test_spec_and_clip_length(vjepa2: VJepa2Teacher) -> None:
    spec = vjepa2.spec
    assert (spec.input_size, spec.grid, spec.channels, spec.cls_channels) == (48, (6, 6), 32, None)
    assert (vjepa2.clip_frames, vjepa2.tubelet) == (4, 2)


def test_each_frame_gets_its_tubelets_tokens_from_the_first_clip_holding_it(
    vjepa2: VJepa2Teacher, frames: torch.Tensor
) -> None:
    video = vjepa2.video_features(frames, clips_per_batch=2).patch
    assert video.shape == (10, 6, 6, 32)
    with torch.inference_mode():
        tokens = vjepa2.model(
            pixel_values_videos=vjepa2.preprocess(frames).unflatten(0, (1, 10))[:, :4], skip_predictor=True
        ).last_hidden_state.reshape(2, 6, 6, 32)  # clip [0, 4): two tubelets
    torch.testing.assert_close(video[0], tokens[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(video[1], tokens[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(video[3], tokens[1], atol=1e-5, rtol=0)
    last = vjepa2.clip_features(frames[None, 6:10]).patch  # frames 8, 9 come from the clip [6, 10)
    torch.testing.assert_close(video[8:], last[2:], atol=1e-5, rtol=0)
    middle = vjepa2.clip_features(frames[None, 4:8]).patch  # frames 6, 7 keep the clip [4, 8)'s tokens
    torch.testing.assert_close(video[4:8], middle, atol=1e-5, rtol=0)
    assert not torch.allclose(video[6:8], last[:2], atol=1e-4)


def test_frame_order_matters(vjepa2: VJepa2Teacher, frames: torch.Tensor) -> None:
    clip = frames[:4]
    order = torch.tensor([2, 0, 3, 1])
    in_order = vjepa2.clip_features(clip[None]).patch
    shuffled = vjepa2.clip_features(clip[order][None]).patch
    # Frame 0's target in the shuffled clip is not its target in the ordered clip.
    assert not torch.allclose(shuffled[1], in_order[0], atol=1e-4)
    assert not torch.allclose(shuffled, in_order[order], atol=1e-4)


@pytest.mark.parametrize("length", [1, 3])
def test_a_video_shorter_than_a_clip_is_one_padded_clip(
    vjepa2: VJepa2Teacher, frames: torch.Tensor, length: int
) -> None:
    video = vjepa2.video_features(frames[:length]).patch
    assert video.shape[0] == length
    padded = torch.cat([frames[:length], frames[length - 1 : length].expand(length % 2, -1, -1, -1)])
    expected = vjepa2.clip_features(padded[None]).patch[:length]
    torch.testing.assert_close(video, expected, atol=1e-5, rtol=0)
    if length == 1:  # a one-frame video is the still image
        torch.testing.assert_close(video, vjepa2(frames[:1]).patch, atol=1e-5, rtol=0)


def test_bad_clips_are_refused(vjepa2: VJepa2Teacher, frames: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"\[N, T, 3, H, W\]"):
        vjepa2.clip_features(frames)
    with pytest.raises(ValueError, match=r"torch\.int64"):
        vjepa2.clip_features(frames[None].long())


def test_save_pretrained_directory_round_trips(
    vjepa2: VJepa2Teacher, frames: torch.Tensor, tmp_path: Path
) -> None:
    vjepa2.model.save_pretrained(tmp_path)
    loaded = load_teacher("vjepa2", source="hub", weights=str(tmp_path), device="cpu")
    assert_same_teacher(loaded, vjepa2, frames[:2])


def test_a_checkpoint_of_another_family_is_refused(tmp_path: Path) -> None:
    dinov2.build_tiny().model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"'vjepa2'.*'dinov2' checkpoint"):
        load_teacher("vjepa2", source="hub", weights=str(tmp_path))
