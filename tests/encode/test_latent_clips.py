"""LatentClips: windows carry the planted actions of their frames, frame skip and history respected; deterministic, resumable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from latent_helpers import FRAMES, planted_action, save_tiny_student, write_frames_dataset

from distill.data.latent_clips import LatentClips
from distill.data.latents import CheckpointRef
from distill.distributed import DistContext
from distill.encode import EncodeConfig, run_encoding


@pytest.fixture(scope="module")
def latents(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    frames = write_frames_dataset(root)
    model = save_tiny_student(root / "student")
    ref = CheckpointRef.of(root / "student", 8, 32)
    run_encoding(EncodeConfig(root / "student", frames, root / "latents"), model, ref, DistContext())
    return root / "latents"


@pytest.mark.parametrize(("history", "skip"), [(2, 1), (3, 2)])
def test_windows_carry_the_actions_of_their_frames(latents: Path, history: int, skip: int) -> None:
    clips = LatentClips(latents, history=history, horizon=1, frame_skip=skip, arrays=["action"])
    length = history + 1
    assert len(clips) == sum(max(n - length * skip + 1, 0) for n in FRAMES)
    for batch in clips.in_order(batch_size=4):
        assert batch.z.shape[1:] == (length, 8) and batch.arrays["action"].shape[1:] == (length, 2 * skip)
        for b, (video_id, start) in enumerate(zip(batch.video_ids, batch.starts, strict=True)):
            number = int(video_id[1:])
            video = next(v for v in clips.videos if v.video_id == video_id)
            positions = [start + j * skip for j in range(length)]
            assert batch.frame_indices[b].tolist() == positions
            assert torch.equal(batch.z[b], video.z[positions])
            for j, position in enumerate(positions):  # every action until the next window frame
                expected = [x for s in range(skip) for x in planted_action(number, position + s)]
                assert batch.arrays["action"][b, j].tolist() == expected


def test_shuffled_batches_are_deterministic_resumable_and_split_across_ranks(latents: Path) -> None:
    clips = LatentClips(latents, history=2, horizon=1)
    stream = clips.batches(4, seed=7)
    full = [next(stream) for _ in range(8)]  # more than one epoch of 22 windows
    resumed = clips.batches(4, seed=7, start_batch=5)
    for expected in full[5:]:
        got = next(resumed)
        assert (got.video_ids, got.starts) == (expected.video_ids, expected.starts)
    epoch = [(v, s) for b in full[:6] for v, s in zip(b.video_ids, b.starts, strict=True)][: len(clips)]
    assert len(set(epoch)) == len(clips)  # an epoch visits every window once
    other_seed = next(clips.batches(4, seed=8))
    assert (other_seed.video_ids, other_seed.starts) != (full[0].video_ids, full[0].starts)
    ranks = [next(clips.batches(4, seed=7, rank=r, world_size=2)) for r in range(2)]
    shares = [(v, s) for r in ranks for v, s in zip(r.video_ids, r.starts, strict=True)]
    assert sorted(shares) == sorted(zip(full[0].video_ids, full[0].starts, strict=True))


def test_bad_requests_name_the_fix(latents: Path) -> None:
    with pytest.raises(KeyError, match=r"no arrays \['torque'\]"):
        LatentClips(latents, arrays=["torque"])
    with pytest.raises(ValueError, match="no video has the 24 frames"):
        LatentClips(latents, history=11, horizon=1, frame_skip=2)
