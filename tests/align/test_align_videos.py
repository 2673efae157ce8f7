"""Paired videos: distill-subsample-videos --target writes frame t of each target video under frame t's key."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distill.data.manifest import load_manifest
from distill.geometry import canonical_view
from distill.preprocess import subsample_videos as subsample_module
from distill.preprocess.pairs import Partner
from distill.preprocess.subsample_videos import VideoConfig, subsample_videos
from distill.synthetic import video_frames, write_video

SIZE = 32
SHAPE = (48, 32)


def _shard_frames(folder: Path) -> dict[str, tuple[dict[str, object], np.ndarray]]:
    """key -> (metadata, image) of every sample in a folder's shards."""
    out: dict[str, tuple[dict[str, object], np.ndarray]] = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m) for m in tar.getmembers()}
            for name, handle in members.items():
                if name.endswith(".json") and handle is not None:
                    meta = json.loads(handle.read())
                    jpg = members[name[: -len("json")] + "jpg"]
                    assert jpg is not None
                    out[meta["key"]] = (
                        meta,
                        np.asarray(Image.open(io.BytesIO(jpg.read())), dtype=np.float32),
                    )
    return out


def test_paired_videos_share_keys_frame_for_frame_and_mismatches_are_rejected(tmp_path: Path) -> None:
    src, tgt = tmp_path / "src", tmp_path / "tgt"
    write_video(src / "a.mp4", frames=8, size=SHAPE, seed=0)
    write_video(tgt / "a.mkv", frames=8, size=SHAPE, seed=10)  # pairs by relative path, extension aside
    write_video(src / "scene" / "b.mp4", frames=6, size=SHAPE, seed=1)
    write_video(tgt / "scene" / "b.mp4", frames=6, size=SHAPE, seed=11)
    write_video(src / "short.mp4", frames=8, size=SHAPE, seed=2)
    write_video(tgt / "short.mp4", frames=6, size=SHAPE, seed=12)  # one frame count against another
    write_video(src / "alone.mp4", frames=4, size=SHAPE, seed=3)
    write_video(tgt / "orphan.mp4", frames=4, size=SHAPE, seed=4)
    dataset = tmp_path / "data" / "paired"
    counts = subsample_videos(
        VideoConfig(src, dataset, size=SIZE, every_n=2, samples_per_shard=5, target=tgt)
    )
    assert counts == {"train": 4 + 3}

    source, target = _shard_frames(dataset / "images"), _shard_frames(dataset / "target_images")
    assert list(source) == list(target) and len(source) == 7  # same keys, same order
    for seed, relpath, frames in ((10, "a.mkv", 8), (11, "scene/b.mp4", 6)):
        views = [
            np.asarray(canonical_view(f, SIZE), dtype=np.float32) for f in video_frames(frames, SHAPE, seed)
        ]
        for key, (meta, image) in target.items():
            if meta["source"] != relpath:
                continue
            index = int(str(meta["frame_index"]))
            errors = [float(np.abs(image - view).mean()) for view in views]
            assert int(np.argmin(errors)) == index, f"{key}: target frame misaligned"
            assert source[key][0]["target"] == relpath and meta["pair_of"] == source[key][0]["source"]

    manifest = load_manifest(dataset)
    assert manifest.pairing["pairs"] == 7 and manifest.pairing["target"] == str(tgt.resolve())
    rejected = (dataset / "rejected.txt").read_text()
    assert "short.mp4 (8 frames) / short.mp4 (6 frames)" in rejected
    assert "alone.mp4" in rejected and "orphan.mp4" in rejected
    assert manifest.rejected == 3


def test_a_target_folder_with_a_lerobot_camera_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--target pairs plain video folders"):
        VideoConfig(tmp_path, tmp_path / "d", every_n=1, camera="top", target=tmp_path)


def test_a_target_that_changes_after_its_check_writes_nothing_of_its_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: each target passes the pair check, then b's is cut short and c's made undecodable."""
    src, tgt = tmp_path / "src", tmp_path / "tgt"
    for seed, name in enumerate(("a", "b", "c")):
        write_video(src / f"{name}.mp4", frames=8, size=SHAPE, seed=seed)
        write_video(tgt / f"{name}.mp4", frames=8, size=SHAPE, seed=seed + 10)
    checked = subsample_module.pair_mismatch

    def changes_after_check(rel: str, path: Path, partner: Partner) -> str | None:
        verdict = checked(rel, path, partner)
        if rel == "b.mp4":
            write_video(partner.path, frames=3, size=SHAPE, seed=20)
        elif rel == "c.mp4":
            partner.path.write_bytes(b"not a video")
        return verdict

    monkeypatch.setattr(subsample_module, "pair_mismatch", changes_after_check)
    dataset = tmp_path / "paired"
    counts = subsample_videos(
        VideoConfig(src, dataset, size=SIZE, every_n=2, samples_per_shard=3, target=tgt)
    )
    assert counts == {"train": 4}
    source, target = _shard_frames(dataset / "images"), _shard_frames(dataset / "target_images")
    assert list(source) == list(target) == [f"a_f{i:06d}" for i in (0, 2, 4, 6)]
    rejected = (dataset / "rejected.txt").read_text()
    assert "pair b.mp4 / b.mp4: the target ended before frame 4 of the source" in rejected
    assert "its target c.mp4: no decodable frame" in rejected
    assert load_manifest(dataset).rejected == 2
