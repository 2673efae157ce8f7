"""Decoding a student trained against dinov3 and sam2: DINOv3 PCA maps and SAM 2 masks, by value.

The student row and the teacher row must be the decoders applied to the features each side gives
(the teachers' own features, and the student's prediction from its z), the two input scenes must
decode differently, and the command must write exactly what the API renders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from teacher_helpers import scene_batch

from distill.decode import MaskSettings, decode_images, fit_pca, load_decoder_teachers
from distill.decode.cli import main
from distill.decode.masks import MaskDecoding, automatic_masks
from distill.decode.media import iter_clips
from distill.decode.render import render
from distill.models.config import StudentConfig
from distill.models.student import Student
from distill.stats import StatsAccumulator
from distill.synthetic import render_scene
from distill.teachers import Teacher, load_teacher

TEACHERS = ("dinov3", "sam2")
SIZE = 64
SETTINGS = MaskSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
FAST_MASKS = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    teachers = {name: load_teacher(name, "tiny", device="cpu") for name in TEACHERS}
    images = scene_batch(4, seed=50)
    stats = {}
    for name, teacher in teachers.items():
        accumulator = StatsAccumulator(name)
        accumulator.add(teacher(images))
        stats[name] = accumulator.finish()
    config = StudentConfig.from_preset(
        "tiny",
        {name: t.spec for name, t in teachers.items()},
        image_size=SIZE,
        patch_size=16,
        decoder_depth=2,
    )
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("student") / "checkpoint"
    Student(config, load_pretrained=False).save_pretrained(directory, stats)
    return directory


@pytest.fixture(scope="module")
def student(checkpoint: Path) -> Student:
    return Student.from_pretrained(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def decoders(student: Student, checkpoint: Path) -> dict[str, Teacher]:
    """The teachers the decode command builds for this checkpoint (the tiny ones it was trained on)."""
    return load_decoder_teachers(student.config.teachers, TEACHERS, device="cpu", checkpoint=str(checkpoint))


def _segmentations(records: list[dict[str, Any]]) -> np.ndarray:
    return np.stack([record["segmentation"] for record in records])


def test_pca_maps_and_masks_are_the_decoders_on_each_rows_features(
    student: Student, decoders: dict[str, Teacher]
) -> None:
    frames = scene_batch(2, SIZE, seed=3)  # two different scenes
    mine, theirs = decode_images(student, frames, "pca,masks", decoders, compare=True, mask_settings=SETTINGS)
    assert theirs is not None
    grid = student.config.teachers["dinov3"].grid
    with torch.inference_mode():
        dinov3, sam2 = decoders["dinov3"](frames), decoders["sam2"](frames)
        predicted = student.predict(student.encode_video(frames), denormalize=True).features

    # DINOv3: the teacher row is PCA fitted on its own features; the student row is drawn in that basis
    basis = fit_pca(dinov3.patch)
    torch.testing.assert_close(theirs.pca["dinov3"], basis.to_rgb(dinov3.patch))
    torch.testing.assert_close(mine.pca["dinov3"], basis.to_rgb(predicted["dinov3"].patch))
    # the two scenes differ (less in the untrained student's prediction than in the teacher's features)
    for pca, apart in ((theirs.pca["dinov3"], 0.1), (mine.pca["dinov3"], 0.005)):
        assert pca.shape == (2, *grid, 3) and float(pca.min()) >= 0.0 and float(pca.max()) <= 1.0
        assert float((pca[0] - pca[1]).abs().mean()) > apart

    # SAM 2: segment-anything's automatic masks on the teacher's and on the student's embeddings
    decoder = decoders["sam2"]
    assert isinstance(decoder, MaskDecoding)
    for row, embedding in ((theirs, sam2.patch), (mine, predicted["sam2"].patch)):
        direct = automatic_masks(decoder, embedding, SIZE, SETTINGS)
        assert [len(records) for records in row.masks["sam2"]] == [len(records) for records in direct]
        for got, want in zip(row.masks["sam2"], direct, strict=True):
            assert len(got) > 0
            np.testing.assert_array_equal(_segmentations(got), _segmentations(want))
            assert [r["predicted_iou"] for r in got] == [r["predicted_iou"] for r in want]
            assert _segmentations(got).shape[1:] == (SIZE, SIZE)
    first, second = (_segmentations(records) for records in theirs.masks["sam2"])
    assert first.shape != second.shape or not np.array_equal(first, second)


def test_the_command_writes_what_the_api_renders(
    tmp_path: Path, checkpoint: Path, student: Student, decoders: dict[str, Teacher]
) -> None:
    media = tmp_path / "scenes"
    media.mkdir()
    for seed in (3, 4):
        render_scene(seed, (80, 64)).save(media / f"scene{seed}.png")
    out = tmp_path / "out"
    argv = ["--checkpoint", str(checkpoint), "--media", str(media), "--output", str(out), "--device", "cpu"]
    assert main([*argv, "--targets", "pca,masks", "--compare-teachers", *FAST_MASKS]) == 0
    written = []
    for clip in iter_clips(media, SIZE):
        mine, theirs = decode_images(
            student, clip.frames, "pca,masks", decoders, compare=True, mask_settings=SETTINGS
        )
        (expected,) = render(mine, theirs, clip.frames, title=clip.source.name)
        got = np.asarray(Image.open(out / f"{clip.name}.png").convert("RGB"))
        assert got.shape == (expected.height, expected.width, 3)
        assert got.shape[1] > 3 * 192 and got.shape[0] > 2 * 192  # input, PCA, masks; two rows
        np.testing.assert_array_equal(got, np.asarray(expected.convert("RGB")))
        written.append(got)
    first, second = written
    assert not np.array_equal(first, second)  # two scenes, two pictures
