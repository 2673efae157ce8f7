"""Paired datasets: both sides under one key, teachers on the target side, every pairing error reported."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distill.data.codec import parse_sample
from distill.data.jpeg import decode_view
from distill.data.manifest import load_manifest
from distill.data.shards import iter_shard, list_keys
from distill.decode.media import MediaError, paired_clips
from distill.preprocess.check import check_dataset
from distill.preprocess.extract import ExtractConfig, TeacherJob, extract_features
from distill.preprocess.organize import OrganizeConfig, organize_images
from distill.preprocess.pairs import same_aspect
from distill.preprocess.rejected import read_rejections
from distill.synthetic import write_paired_folders
from distill.teachers import load_teacher

SIZE = 32


def _organize(source: Path, dataset: Path, **kwargs: object) -> None:
    organize_images(
        OrganizeConfig(source, dataset, size=SIZE, samples_per_shard=3, val_fraction=0.25, **kwargs)  # type: ignore[arg-type]
    )


def _samples(folder: Path) -> dict[str, tuple[np.ndarray, dict]]:
    out = {}
    for shard in sorted(folder.glob("*.tar")):
        for sample in iter_shard(shard):
            image = np.asarray(Image.open(io.BytesIO(sample.files["jpg"])), dtype=np.float32)
            out[sample.key] = (image, json.loads(sample.files["json"]))
    return out


def test_folders_pair_by_path_and_teachers_see_the_target_side(tmp_path: Path) -> None:
    write_paired_folders(tmp_path / "src", tmp_path / "tgt", "invert", classes=2, per_class=5, size=(40, 32))
    dataset = tmp_path / "paired"
    _organize(tmp_path / "src", dataset, target=tmp_path / "tgt")
    manifest = load_manifest(dataset)
    assert manifest.pairing["pairs"] == 10 and manifest.pairing["target"] == str((tmp_path / "tgt").resolve())
    assert manifest.teacher_images == "target_images" and read_rejections(dataset) == []
    for info in manifest.splits.values():
        for shard in info.shards:
            assert list_keys(dataset / "images" / shard.name) == list_keys(
                dataset / "target_images" / shard.name
            )
    source, target = _samples(dataset / "images"), _samples(dataset / "target_images")
    assert source.keys() == target.keys() and len(source) == 10
    for key, (image, meta) in source.items():
        clean, side = target[key]
        assert meta["target"] == side["source"] == meta["source"].replace(".png", ".jpg")
        assert side["pair_of"] == meta["source"] and side["split"] == meta["split"]
        # the same canonical view of both sides: the source is the inverted target, up to JPEG
        assert np.abs(image - (255 - clean)).mean() < 6, key

    extract_features(ExtractConfig(dataset, (TeacherJob("dinov2", "tiny"),), device="cpu", progress=False))
    teacher = load_teacher("dinov2", "tiny", device="cpu")
    first = manifest.splits["train"].shards[0].name
    blobs = {s.key: s.files for s in iter_shard(dataset / "dinov2" / first)}
    for sample in iter_shard(dataset / "target_images" / first):
        stored = parse_sample(blobs[sample.key]["dinov2.safetensors"], first).dequantize()
        view = decode_view(sample.files["jpg"], SIZE, first)
        on_target = teacher(view[None]).patch[0]
        on_source = teacher(decode_view(_jpeg_of(dataset, first, sample.key), SIZE, first)[None]).patch[0]
        assert torch.nn.functional.cosine_similarity(stored.patch, on_target, dim=-1).min() > 0.99
        assert torch.nn.functional.cosine_similarity(stored.patch, on_source, dim=-1).mean() < 0.9
    assert check_dataset(dataset).ok


def _jpeg_of(dataset: Path, shard: str, key: str) -> bytes:
    return next(s.files["jpg"] for s in iter_shard(dataset / "images" / shard) if s.key == key)


def test_pairing_errors_are_rejected_with_their_reason(tmp_path: Path) -> None:
    src, tgt = tmp_path / "src", tmp_path / "tgt"
    write_paired_folders(src, tgt, "overlay", classes=1, per_class=6, size=(40, 32))
    (src / "class_0" / "img_0000.png").unlink()  # a target without its source
    (tgt / "class_0" / "img_0001.jpg").unlink()  # a source without its target
    Image.new("RGB", (40, 32), "red").save(tgt / "class_0" / "img_0002.png")  # two targets claim img_0002
    Image.new("RGB", (40, 32), "red").save(src / "class_0" / "img_0003.jpg")  # two sources claim img_0003
    Image.new("RGB", (32, 32), "red").save(tgt / "class_0" / "img_0004.jpg")  # another aspect ratio
    (tgt / "notes.txt").write_text("not an image")
    dataset = tmp_path / "paired"
    _organize(src, dataset, target=tgt)
    rejected = {(r.stage, r.source): r.reason for r in read_rejections(dataset)}
    assert "no source image" in rejected[("pairs-target", "class_0/img_0000.jpg")]
    assert "no target image class_0/img_0001.*" in rejected[("pairs", "class_0/img_0001.png")]
    assert "2 target files claim it" in rejected[("pairs", "class_0/img_0002.png")]
    for rel in ("class_0/img_0002.jpg", "class_0/img_0002.png"):
        assert "2 target files claim the pair" in rejected[("pairs-target", rel)]
    for rel in ("class_0/img_0003.jpg", "class_0/img_0003.png"):
        assert "2 source files claim the pair" in rejected[("pairs", rel)]
    assert "its source is ambiguous" in rejected[("pairs-target", "class_0/img_0003.jpg")]
    assert "same aspect ratio" in rejected[("organize", "class_0/img_0004.png")]
    assert ("pairs-target", "notes.txt") in rejected
    manifest = load_manifest(dataset)
    assert manifest.rejected == len(rejected) == 10
    kept = [json.loads(s.files["json"])["source"] for s in _all(dataset / "images")]
    assert kept == ["class_0/img_0005.png"] and manifest.pairing["pairs"] == 1


def _all(folder: Path) -> list:
    return [s for shard in sorted(folder.glob("*.tar")) for s in iter_shard(shard)]


def test_a_pairs_csv_pairs_rows_and_reports_bad_ones(tmp_path: Path) -> None:
    src, tgt = tmp_path / "src", tmp_path / "tgt"
    write_paired_folders(src, tgt, "invert", classes=1, per_class=5, size=(40, 32))
    rows = [
        "source,target",
        "class_0/img_0000.png,class_0/img_0001.jpg",  # pairs need not share a name
        "class_0/img_0001.png,class_0/img_0000.jpg",
        "class_0/img_0002.png,class_0/img_0002.jpg",
        "class_0/img_0002.png,class_0/img_0003.jpg",  # the same source twice: one key, two targets
        "class_0/img_0003.png,class_0/missing.jpg",
        "class_0/gone.png,class_0/img_0004.jpg",
    ]
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("\n".join(rows) + "\n")
    dataset = tmp_path / "paired"
    _organize(src, dataset, target=tgt, pairs=pairs)
    rejected = {(r.stage, r.source): r.reason for r in read_rejections(dataset)}
    assert "paired on lines [4, 5]" in rejected[("pairs", "class_0/img_0002.png")]
    assert "missing.jpg is not a file" in rejected[("pairs", "class_0/img_0003.png")]
    assert "no such file" in rejected[("pairs", "class_0/gone.png")]
    assert "not listed in" in rejected[("pairs", "class_0/img_0004.png")]
    assert len(rejected) == 4
    source = _samples(dataset / "images")
    targets = {meta["source"]: meta["target"] for _, meta in source.values()}
    assert targets == {
        "class_0/img_0000.png": "class_0/img_0001.jpg",
        "class_0/img_0001.png": "class_0/img_0000.jpg",
    }
    assert load_manifest(dataset).pairing["match"] == "csv"

    pairs.write_text("src,tgt\na.png,a.jpg\n")
    with pytest.raises(ValueError, match=r"pairs.csv: the first line must be the header 'source,target'"):
        _organize(src, tmp_path / "bad", target=tgt, pairs=pairs)
    pairs.write_text("source,target\na.png\n")
    with pytest.raises(ValueError, match=r"pairs.csv:2: expected two paths"):
        _organize(src, tmp_path / "bad", target=tgt, pairs=pairs)


def test_decode_pairs_media_by_relative_path(tmp_path: Path) -> None:
    write_paired_folders(tmp_path / "src", tmp_path / "tgt", "invert", classes=1, per_class=2, size=(40, 32))
    pairs = list(paired_clips(tmp_path / "src", tmp_path / "tgt", SIZE))
    assert [(a.name, b.name if b else None) for a, b in pairs] == [
        ("class_0__img_0000",) * 2,
        ("class_0__img_0001",) * 2,
    ]
    (tmp_path / "tgt" / "class_0" / "img_0001.jpg").unlink()
    with pytest.raises(MediaError, match="1 without a partner"):
        list(paired_clips(tmp_path / "src", tmp_path / "tgt", SIZE))


def test_same_aspect_is_the_one_pairing_shape_rule() -> None:
    """Images (organize) and videos (subsample_videos) both pair only through it: resolutions may differ,
    the aspect ratio only within 1% of the source's."""
    assert same_aspect((48, 32), (96, 64)) and same_aspect((48, 32), (48, 32))
    assert same_aspect((400, 300), (403, 300)) and not same_aspect((400, 300), (405, 300))  # 0.75% / 1.25%
    assert not same_aspect((48, 32), (32, 32)) and not same_aspect((32, 48), (48, 32))
