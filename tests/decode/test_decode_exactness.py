"""Each decoder fed a teacher's own features reproduces that teacher's own output, through the
decode API (distill.decode), with the tiny teachers: the decode layer adds nothing and loses nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor

from distill.decode import MaskSettings, Prompts, decode_features, load_decoder_teachers
from distill.features import TeacherOutput
from distill.models.student import Student
from distill.teachers import Teacher

SETTINGS = MaskSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)


def _sam_end_to_end(teacher: Any, image: np.ndarray) -> tuple[SamPredictor, list[dict[str, Any]]]:
    """segment-anything on its own: its predictor's embedding and its automatic generator's masks."""
    predictor = SamPredictor(teacher.model)
    predictor.set_image(image)
    generator = SamAutomaticMaskGenerator(
        teacher.model,
        points_per_side=SETTINGS.points_per_side,
        pred_iou_thresh=SETTINGS.pred_iou_thresh,
        stability_score_thresh=SETTINGS.stability_score_thresh,
        box_nms_thresh=SETTINGS.box_nms_thresh,
    )
    return predictor, generator.generate(image)


def _same_records(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> None:
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs, strict=True):
        assert np.array_equal(a["segmentation"], b["segmentation"])
        for key in ("area", "bbox", "predicted_iou", "stability_score", "point_coords", "crop_box"):
            assert a[key] == b[key], key


def test_sam_masks_from_its_own_embedding_equal_sam_end_to_end(
    teachers: dict[str, Teacher], frames: torch.Tensor
) -> None:
    sam: Any = teachers["sam"]
    image = frames[0].permute(1, 2, 0).numpy()
    predictor, expected = _sam_end_to_end(sam, image)
    own = TeacherOutput(patch=predictor.features.permute(0, 2, 3, 1), cls=None)
    prompts = Prompts(points=((20.0, 30.0, 1),), boxes=((4.0, 6.0, 40.0, 50.0),))
    decoded = decode_features(
        {"sam": own}, ["masks"], frames.shape[-1], {"sam": sam}, mask_settings=SETTINGS, prompts=prompts
    )
    _same_records(decoded.masks["sam"][0], expected)
    # Prompts: a single point asks for three masks and keeps the best; a box asks for one.
    point_masks, point_scores, _ = predictor.predict(
        np.array([[20.0, 30.0]]), np.array([1]), multimask_output=True
    )
    box_masks, box_scores, _ = predictor.predict(box=np.array([4.0, 6.0, 40.0, 50.0]), multimask_output=False)
    best = int(point_scores.argmax())
    assert decoded.prompt_masks["sam"].shape == (1, 2, 64, 64)
    assert np.array_equal(decoded.prompt_masks["sam"][0, 0].numpy(), point_masks[best])
    assert np.array_equal(decoded.prompt_masks["sam"][0, 1].numpy(), box_masks[0])
    np.testing.assert_allclose(
        decoded.prompt_scores["sam"][0].numpy(), [point_scores[best], box_scores[0]], rtol=1e-6
    )
    # The teacher's forward gives (to float rounding) the embedding segment-anything computes itself.
    torch.testing.assert_close(sam(frames[:1]).patch, own.patch, rtol=1e-4, atol=1e-5)


def test_depth_from_own_features_equals_predicted_depth(
    teachers: dict[str, Teacher], frames: torch.Tensor
) -> None:
    depth: Any = teachers["depth_anything"]
    with torch.inference_mode():
        expected = depth.model(pixel_values=depth.preprocess(frames)).predicted_depth
    decoded = decode_features({"depth_anything": depth(frames)}, ["depth"], 64, teachers)
    assert decoded.depth["depth_anything"].shape == expected.shape == (3, 56, 56)
    torch.testing.assert_close(decoded.depth["depth_anything"], expected, rtol=0, atol=0)


def test_mae_pixels_from_own_features_equal_vitmae_output(
    teachers: dict[str, Teacher], frames: torch.Tensor
) -> None:
    mae: Any = teachers["mae"]
    with torch.inference_mode():
        logits = mae.model(pixel_values=mae.preprocess(frames), noise=mae.raster_noise(3, mae.device)).logits
        mean = torch.tensor(mae.spec.mean).view(1, 3, 1, 1)
        std = torch.tensor(mae.spec.std).view(1, 3, 1, 1)
        expected = (mae.model.unpatchify(logits) * std + mean).clamp(0, 1)
    decoded = decode_features({"mae": mae(frames)}, ["pixels"], 64, teachers)
    assert decoded.pixels["mae"].shape == (3, 3, 64, 64)
    torch.testing.assert_close(decoded.pixels["mae"], expected, rtol=1e-5, atol=1e-6)


def test_stats_round_trip_decodes_like_raw_features(
    student: Student, teachers: dict[str, Teacher], frames: torch.Tensor
) -> None:
    """What the student predicts is stats-normalised; denormalising it must give back the raw space."""
    assert student.stats is not None
    raw = {name: teachers[name](frames) for name in ("dinov2", "depth_anything", "mae")}
    normalised = {name: student.stats[name].normalize(out) for name, out in raw.items()}
    assert not torch.allclose(normalised["mae"].patch, raw["mae"].patch)
    back = student.denormalize(normalised)
    targets = ["pca", "depth", "pixels"]
    a = decode_features(raw, targets, 64, teachers)
    b = decode_features(back, targets, 64, teachers, pca_bases=a.pca_bases)
    torch.testing.assert_close(b.depth["depth_anything"], a.depth["depth_anything"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.pixels["mae"], a.pixels["mae"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.pca["dinov2"], a.pca["dinov2"], rtol=0, atol=1e-5)


def test_hub_teacher_loaded_by_path_decodes_like_tiny(
    tmp_path: Path, student: Student, teachers: dict[str, Teacher], frames: torch.Tensor
) -> None:
    """The hub path (a save_pretrained directory) gives a decoder identical to the tiny one."""
    tiny: Any = teachers["depth_anything"]
    tiny.model.save_pretrained(tmp_path / "depth")
    hub = load_decoder_teachers(
        student.config.teachers, ["depth_anything"], "hub", {"depth_anything": str(tmp_path / "depth")}
    )
    features = {"depth_anything": tiny(frames)}
    ours = decode_features(features, ["depth"], 64, hub).depth["depth_anything"]
    assert torch.equal(ours, decode_features(features, ["depth"], 64, teachers).depth["depth_anything"])


def test_checkpoint_teacher_spec_mismatch_is_a_clear_error(student: Student) -> None:
    from dataclasses import replace

    specs = dict(student.config.teachers)
    specs["sam"] = replace(specs["sam"], channels=256, grid=(64, 64), input_size=1024)
    with pytest.raises(
        ValueError, match=r"trained against a 'sam' teacher.*channels 256 vs 32.*--teachers-source hub"
    ):
        load_decoder_teachers(specs, ["sam"], "tiny", checkpoint="ckpt")
    with pytest.raises(ValueError, match="given with source 'tiny'"):
        load_decoder_teachers(specs, ["mae"], "tiny", {"mae": "facebook/vit-mae-large"})
    assert set(load_decoder_teachers(student.config.teachers, ["sam", "mae"], "auto")) == {"sam", "mae"}
