"""vjepa2 over a frames dataset: extraction feeds each video's frames in order, across shard boundaries,
from a paired dataset's target side; image datasets are refused; online it encodes the batch's frames as
stills."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distill.data.clips import video_clips
from distill.data.jpeg import decode_view
from distill.data.manifest import TARGET_IMAGES_DIR, load_manifest
from distill.data.shards import iter_shard
from distill.distributed import DistContext
from distill.preprocess.extract import ExtractConfig, TeacherJob, run_extraction
from distill.preprocess.organize import OrganizeConfig, organize_images
from distill.preprocess.subsample_videos import VideoConfig, subsample_videos
from distill.preprocess.video_targets import VideoTargets
from distill.stats import StatsAccumulator
from distill.synthetic import write_image_folder, write_video
from distill.teachers.vjepa2 import VJepa2Teacher
from distill.train.online import OnlineTargets


@pytest.fixture(scope="module")
def frames_dataset(tmp_path_factory: pytest.TempPathFactory, vjepa2: VJepa2Teacher) -> Path:
    """Videos of 7 and 3 frames in shards of 3: the first video spans three shards, the second is short."""
    root = tmp_path_factory.mktemp("vjepa2")
    write_video(root / "videos" / "a.mp4", frames=7, size=(64, 64), fps=8, seed=1)
    write_video(root / "videos" / "b.mp4", frames=3, size=(64, 64), fps=8, seed=2)
    dataset = root / "ds"
    subsample_videos(VideoConfig(root / "videos", dataset, size=64, samples_per_shard=3, every_n=1))
    job = TeacherJob("vjepa2", "tiny", None, "fp16")
    run_extraction(
        ExtractConfig(dataset, (job,), batch_size=2, progress=False), {"vjepa2": vjepa2}, DistContext()
    )
    return dataset


def test_every_frame_gets_its_videos_clip_target(frames_dataset: Path, vjepa2: VJepa2Teacher) -> None:
    videos = list(
        video_clips(frames_dataset, clip_len=100, teachers=("vjepa2",), normalize=False, allow_short=True)
    )
    assert [(v.video_id, v.frame_indices) for v in videos] == [("a", list(range(7))), ("b", [0, 1, 2])]
    for video in videos:
        stored = video.targets["vjepa2"].patch
        expected = vjepa2.video_features(video.frames).patch
        assert stored.shape == expected.shape == (len(video.frame_indices), 6, 6, 32)
        torch.testing.assert_close(stored, expected, atol=2e-3 * float(expected.abs().max()), rtol=0)
        # Clip context, not stills: the stored targets are not the frames encoded one by one.
        assert not torch.allclose(stored, vjepa2(video.frames).patch, atol=1e-2)


def test_a_shard_in_the_middle_of_a_video_reads_its_neighbours(
    frames_dataset: Path, vjepa2: VJepa2Teacher
) -> None:
    """What a rank that starts at the second shard computes: the video's frames from all three shards."""
    manifest = load_manifest(frames_dataset)
    shards = [shard.name for shard in manifest.split("train").shards]
    targets = VideoTargets(frames_dataset, manifest, vjepa2, "fp32", batch_size=8)
    middle = targets.features(shards[1], ["a_f000003", "a_f000004", "a_f000005"]).patch
    video = next(v for v in video_clips(frames_dataset, clip_len=100, allow_short=True) if v.video_id == "a")
    torch.testing.assert_close(middle, vjepa2.video_features(video.frames).patch[3:6], atol=1e-5, rtol=0)


def test_a_paired_dataset_is_extracted_from_its_target_frames(tmp_path: Path, vjepa2: VJepa2Teacher) -> None:
    write_video(tmp_path / "src" / "a.mp4", frames=5, size=(64, 64), fps=8, seed=1)
    write_video(tmp_path / "tgt" / "a.mp4", frames=5, size=(64, 64), fps=8, seed=5)
    dataset = tmp_path / "ds"
    subsample_videos(
        VideoConfig(
            tmp_path / "src", dataset, size=64, samples_per_shard=3, every_n=1, target=tmp_path / "tgt"
        )
    )
    job = TeacherJob("vjepa2", "tiny", None, "fp16")
    run_extraction(
        ExtractConfig(dataset, (job,), batch_size=4, progress=False), {"vjepa2": vjepa2}, DistContext()
    )
    (video,) = video_clips(dataset, clip_len=100, teachers=("vjepa2",), normalize=False, allow_short=True)
    shards = [dataset / TARGET_IMAGES_DIR / s.name for s in load_manifest(dataset).split("train").shards]
    target = torch.stack(
        [decode_view(s.files["jpg"], 64, s.key) for shard in shards for s in iter_shard(shard)]
    )
    assert target.shape == video.frames.shape and not torch.equal(target, video.frames)
    stored = video.targets["vjepa2"].patch
    expected = vjepa2.video_features(target).patch  # stored as fp16
    torch.testing.assert_close(stored, expected, atol=2e-3 * float(expected.abs().max()), rtol=0)
    assert not torch.allclose(stored, vjepa2.video_features(video.frames).patch, atol=1e-2)


def test_an_image_dataset_is_refused(tmp_path: Path, vjepa2: VJepa2Teacher) -> None:
    write_image_folder(tmp_path / "images", classes=1, per_class=2, size=(64, 64))
    organize_images(OrganizeConfig(tmp_path / "images", tmp_path / "ds", size=64, val_fraction=0.0))
    job = TeacherJob("vjepa2", "tiny", None, "fp16")
    with pytest.raises(ValueError, match=r"'vjepa2'.*video metadata.*distill-subsample-videos"):
        run_extraction(
            ExtractConfig(tmp_path / "ds", (job,), progress=False), {"vjepa2": vjepa2}, DistContext()
        )
    assert not (tmp_path / "ds" / "vjepa2").exists()


def test_online_targets_are_the_frames_as_stills(vjepa2: VJepa2Teacher) -> None:
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    accumulator = StatsAccumulator("vjepa2")
    accumulator.add(vjepa2(images))
    stats = accumulator.finish()
    online = OnlineTargets({"vjepa2": vjepa2}, {"vjepa2": stats}, precision="fp32")(images)["vjepa2"]
    torch.testing.assert_close(online.patch, stats.normalize(vjepa2(images)).patch, atol=1e-5, rtol=0)
