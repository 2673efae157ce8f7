"""organize: splits, labels, keys, the canonical view, and every bad input kind."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from data_helpers import PER_SHARD, SIZE, Built
from PIL import Image

from distill.data.manifest import load_manifest
from distill.data.shards import iter_shard, list_keys
from distill.images import ImageLimits, RejectedInput, load_rgb
from distill.preprocess.organize import OrganizeConfig, organize_images
from distill.preprocess.rejected import read_rejections
from distill.synthetic import write_image_folder


def _stored(dataset: Path, key: str) -> tuple[np.ndarray, dict]:
    manifest = load_manifest(dataset)
    for info in manifest.splits.values():
        for shard in info.shards:
            for sample in iter_shard(dataset / "images" / shard.name):
                if sample.key == key:
                    image = np.asarray(Image.open(io.BytesIO(sample.files["jpg"])))
                    return image, json.loads(sample.files["json"])
    raise KeyError(key)


def test_every_bad_kind_is_rejected_with_its_reason_or_converted(built: Built) -> None:
    rejected = {r.source: r for r in read_rejections(built.dataset)}
    for relpath, reason in built.expected_bad.items():
        if reason:
            assert relpath in rejected, f"{relpath} should be in rejected.txt"
            assert reason in rejected[relpath].reason, rejected[relpath].reason
            assert rejected[relpath].stage == "organize"
        else:
            assert relpath not in rejected, f"{relpath} should have been converted, not rejected"
    assert set(rejected) == {p for p, r in built.expected_bad.items() if r}
    assert load_manifest(built.dataset).rejected == len(rejected)


def test_conversions_rgba_on_white_gray16_scaled_cmyk_kept(built: Built) -> None:
    rgba, meta = _stored(built.dataset, "train__class_0__rgba")
    assert meta["mode"] == "RGBA"
    assert rgba.shape == (SIZE, SIZE, 3) and rgba.min() >= 250  # fully transparent -> white
    gray16, meta16 = _stored(built.dataset, "train__class_0__gray16")
    gray8, _ = _stored(built.dataset, "train__class_0__gray")
    assert meta16["mode"].startswith("I")
    # the 16-bit file holds the 8-bit grayscale * 257: scaled back it is the same picture
    assert np.abs(gray16.astype(int) - gray8.astype(int)).mean() < 2.0
    cmyk, meta_c = _stored(built.dataset, "train__class_0__cmyk")
    assert meta_c["mode"] == "CMYK" and cmyk.shape == (SIZE, SIZE, 3)


def test_imagenet_layout_splits_labels_counts_and_shards(built: Built) -> None:
    manifest = load_manifest(built.dataset)
    assert set(manifest.splits) == {"train", "val"}
    assert manifest.splits["train"].count == 24 + 4  # 24 scenes + gray, cmyk, rgba, gray16
    assert manifest.splits["val"].count == 8
    assert manifest.classes == ("class_0", "class_1")
    for info in manifest.splits.values():
        assert all(shard.count == PER_SHARD for shard in info.shards[:-1])
        for shard in info.shards:
            assert len(list_keys(built.dataset / "images" / shard.name)) == shard.count
    _, meta = _stored(built.dataset, "val__class_1__img_0003")
    assert meta["label"] == "class_1" and meta["label_index"] == 1 and meta["split"] == "val"
    assert meta["source"] == "val/class_1/img_0003.jpg" and (meta["width"], meta["height"]) == (80, 96)


def test_canonical_view_is_what_is_stored(built: Built) -> None:
    from distill.geometry import canonical_view

    stored, _ = _stored(built.dataset, "train__class_1__img_0007")
    expected = np.asarray(
        canonical_view(Image.open(built.source / "train/class_1/img_0007.jpg").convert("RGB"), SIZE)
    )
    assert stored.shape == expected.shape
    assert np.abs(stored.astype(int) - expected.astype(int)).mean() < 3.0  # JPEG q95 re-encode only


def test_hash_split_is_stable_and_parallel_build_is_identical(tmp_path: Path) -> None:
    source = tmp_path / "flat"
    write_image_folder(source, classes=3, per_class=10, size=(40, 40))
    a = organize_images(
        OrganizeConfig(source, tmp_path / "a", size=32, samples_per_shard=7, val_fraction=0.3)
    )
    b = organize_images(
        OrganizeConfig(source, tmp_path / "b", size=32, samples_per_shard=7, val_fraction=0.3, workers=2)
    )
    assert a.counts == b.counts and sum(a.counts.values()) == 30 and a.counts["val"] > 0
    for info in load_manifest(tmp_path / "a").splits.values():
        for shard in info.shards:
            assert (tmp_path / "a/images" / shard.name).read_bytes() == (
                tmp_path / "b/images" / shard.name
            ).read_bytes()
    # adding files never moves an existing image between splits
    write_image_folder(source / "extra", classes=1, per_class=5, size=(40, 40), seed=9)
    organize_images(OrganizeConfig(source, tmp_path / "c", size=32, samples_per_shard=7, val_fraction=0.3))

    def split_of(dataset: Path) -> dict[str, str]:
        out: dict[str, str] = {}
        for split, info in load_manifest(dataset).splits.items():
            for shard in info.shards:
                out |= dict.fromkeys(list_keys(dataset / "images" / shard.name), split)
        return out

    old, new = split_of(tmp_path / "a"), split_of(tmp_path / "c")
    assert all(new[key] == split for key, split in old.items())


def test_existing_dataset_is_not_overwritten_without_the_flag(tmp_path: Path) -> None:
    source = tmp_path / "src"
    write_image_folder(source, classes=1, per_class=3, size=(40, 40))
    cfg = OrganizeConfig(source, tmp_path / "ds", size=32, val_fraction=0.0)
    organize_images(cfg)
    with pytest.raises(FileExistsError, match="--overwrite"):
        organize_images(cfg)
    organize_images(OrganizeConfig(source, tmp_path / "ds", size=32, val_fraction=0.0, overwrite=True))


def test_bomb_limit_is_configurable(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (200, 150)).save(path)
    assert load_rgb(path, ImageLimits(min_size=8, max_pixels=30_000))[0].size == (200, 150)
    with pytest.raises(RejectedInput, match="decompression bomb"):
        load_rgb(path, ImageLimits(min_size=8, max_pixels=29_999))
