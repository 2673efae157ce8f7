"""SAM 2 teacher: the embedding target, strict loading, and exact mask decoding from its own features."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from teacher_helpers import assert_same_teacher
from transformers import Sam2ImageProcessor

from distill.teachers import load_teacher
from distill.teachers.sam2 import Sam2Teacher, sam2_spec, tiny_config
from distill.teachers.sam_hf import build_tiny_sam_hf

SIZE = 64  # the tiny SAM 2's input size


@pytest.fixture(scope="module")
def sam2() -> Sam2Teacher:
    teacher = load_teacher("sam2", device="cpu")
    assert isinstance(teacher, Sam2Teacher)
    return teacher


@pytest.fixture(scope="module")
def levels(sam2: Sam2Teacher, images: torch.Tensor) -> list[torch.Tensor]:
    return sam2.image_levels(images)


@pytest.fixture(scope="module")
def embedding(sam2: Sam2Teacher, images: torch.Tensor) -> torch.Tensor:
    return sam2(images).patch


def reference_masks(
    sam2: Sam2Teacher, images: torch.Tensor, multimask: bool, **prompts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sam2Model from pixels, logits post-processed by Sam2ImageProcessor: the teacher's own masks."""
    with torch.inference_mode():
        out = sam2.model(pixel_values=sam2.preprocess(images), multimask_output=multimask, **prompts)
    logits = Sam2ImageProcessor().post_process_masks(list(out.pred_masks), [(SIZE, SIZE)] * 2, binarize=False)
    return torch.stack(logits)[:, 0], out.iou_scores[:, 0]


def test_spec_and_target_are_the_decoders_embedding(sam2: Sam2Teacher, images: torch.Tensor) -> None:
    spec = sam2.spec
    assert (spec.input_size, spec.grid, spec.channels, spec.cls_channels) == (SIZE, (8, 8), 32, None)
    out = sam2(images)
    with torch.inference_mode():
        levels = sam2.model.get_image_embeddings(sam2.preprocess(images))
        without_memory = sam2.model.get_image_features(sam2.preprocess(images)).fpn_hidden_states[-1]
    assert torch.equal(out.patch, levels[-1].permute(0, 2, 3, 1))
    # The no-memory embedding is part of the target (the decoder reads it), and it is not zero.
    assert not torch.equal(out.patch.flatten(1, 2), without_memory.permute(1, 0, 2))


def test_real_hiera_large_geometry() -> None:
    config: Any = tiny_config()
    config.vision_config.backbone_config.image_size = [1024, 1024]
    config.vision_config.backbone_feature_sizes = [[256, 256], [128, 128], [64, 64]]
    config.vision_config.fpn_hidden_size = 256
    config.prompt_encoder_config.image_size, config.prompt_encoder_config.patch_size = 1024, 16
    spec = sam2_spec(config, {})
    assert (spec.input_size, spec.grid, spec.channels) == (1024, (64, 64), 256)


@pytest.mark.parametrize("multimask", [True, False])
def test_points_decode_exactly_the_teachers_masks(
    sam2: Sam2Teacher,
    images: torch.Tensor,
    embedding: torch.Tensor,
    levels: list[torch.Tensor],
    multimask: bool,
) -> None:
    points = torch.tensor([[[10.0, 20.0], [40.0, 30.0]], [[30.0, 40.0], [5.0, 50.0]]])
    labels = torch.tensor([[1, 0], [1, 1]])
    logits, scores = sam2.predict_masks(
        embedding, points, labels, multimask=multimask, return_logits=True, high_res=levels[:2]
    )
    expected, expected_scores = reference_masks(
        sam2, images, multimask, input_points=points[:, None], input_labels=labels[:, None].int()
    )
    assert logits.shape == (2, 3 if multimask else 1, SIZE, SIZE)
    assert torch.equal(logits, expected) and torch.equal(scores, expected_scores)
    masks, _ = sam2.predict_masks(embedding, points, labels, multimask=multimask, high_res=levels[:2])
    assert masks.dtype == torch.bool and torch.equal(masks, expected > 0)
    assert 0 < masks.float().mean() < 1


def test_boxes_at_another_view_size_decode_exactly(
    sam2: Sam2Teacher, embedding: torch.Tensor, levels: list[torch.Tensor]
) -> None:
    """Box prompts in a 128 px view map to the model's 64 px frame; masks come back at 128."""
    boxes = torch.tensor([[10.0, 12.0, 90.0, 100.0], [0.0, 30.0, 60.0, 127.0]])
    logits, scores = sam2.predict_masks(
        embedding, boxes=boxes, multimask=False, image_size=128, return_logits=True, high_res=levels[:2]
    )
    with torch.inference_mode():
        out = sam2.model(image_embeddings=levels, input_boxes=boxes[:, None] / 2, multimask_output=False)
    expected = Sam2ImageProcessor().post_process_masks(list(out.pred_masks), [(128, 128)] * 2, binarize=False)
    assert torch.equal(logits, torch.stack(expected)[:, 0]) and torch.equal(scores, out.iou_scores[:, 0])


def test_without_high_res_levels_the_decoder_reads_zeros(
    sam2: Sam2Teacher, embedding: torch.Tensor, levels: list[torch.Tensor]
) -> None:
    points = torch.tensor([[[20.0, 20.0]], [[40.0, 10.0]]])
    plain, _ = sam2.predict_masks(embedding, points, return_logits=True)
    zeros = [torch.zeros_like(level) for level in levels[:2]]
    assert torch.equal(plain, sam2.predict_masks(embedding, points, return_logits=True, high_res=zeros)[0])
    assert not torch.equal(
        plain, sam2.predict_masks(embedding, points, return_logits=True, high_res=levels[:2])[0]
    )


def test_automatic_masks_are_the_prompted_masks_of_their_points(
    sam2: Sam2Teacher, embedding: torch.Tensor, levels: list[torch.Tensor]
) -> None:
    high_res = [level[:1] for level in levels[:2]]
    records = sam2.automatic_masks(
        embedding[0], SIZE, points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0, high_res=high_res
    )
    assert records and set(records[0]) >= {"segmentation", "area", "bbox", "predicted_iou", "point_coords"}
    for record in records:
        point = torch.tensor([record["point_coords"]], dtype=torch.float32)
        masks, scores = sam2.predict_masks(embedding[:1], point, high_res=high_res)
        match = [k for k in range(3) if torch.equal(masks[0, k], torch.from_numpy(record["segmentation"]))]
        assert match and any(abs(float(scores[0, k]) - record["predicted_iou"]) < 1e-6 for k in match), (
            "a record's mask must be one of SAM 2's masks for its own point"
        )


def test_save_pretrained_directory_round_trips(
    sam2: Sam2Teacher, images: torch.Tensor, tmp_path: Path
) -> None:
    sam2.model.save_pretrained(tmp_path)
    loaded = load_teacher("sam2", source="hub", weights=str(tmp_path), device="cpu")
    assert_same_teacher(loaded, sam2, images)


def test_a_sam_checkpoint_is_refused(tmp_path: Path) -> None:
    build_tiny_sam_hf().model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"'sam2'.*'sam' checkpoint"):
        load_teacher("sam2", source="hub", weights=str(tmp_path))
