"""The sam (segment-anything) and sam_hf teachers: geometry, strict loading, and exact mask decoding."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from segment_anything import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry

from distill.synthetic import render_scene
from distill.teachers import load_teacher
from distill.teachers.depth_anything import build_tiny_depth_anything
from distill.teachers.sam import SamTeacher, build_tiny_sam
from distill.teachers.sam_arch import SAM_ARCHS, build_sam_model
from distill.teachers.sam_checkpoint import _arch_shapes, infer_sam_type
from distill.teachers.sam_hf import SamHfTeacher, build_tiny_sam_hf

SIZE = 64  # the tiny SAM's input size: scenes this size reach both paths without resampling


@pytest.fixture(scope="module")
def sam() -> SamTeacher:
    teacher = load_teacher("sam", device="cpu")
    assert isinstance(teacher, SamTeacher)
    return teacher


@pytest.fixture(scope="module")
def scenes() -> np.ndarray:
    """Two synthetic RGB scenes, HWC uint8 (segment-anything's input format)."""
    return np.stack([np.array(render_scene(seed, (SIZE, SIZE))) for seed in (1, 2)])


def as_batch(scenes: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(scenes).permute(0, 3, 1, 2).contiguous()


def predictor_features(sam: SamTeacher, image: np.ndarray) -> tuple[SamPredictor, torch.Tensor]:
    """segment-anything's own path: SamPredictor.set_image encodes the image; features as [1, h, w, C]."""
    predictor = SamPredictor(sam.model)
    predictor.set_image(image)
    return predictor, predictor.get_image_embedding().permute(0, 2, 3, 1)


# --- geometry and building ----------------------------------------------------------------------


def test_tiny_spec_and_output(sam: SamTeacher, scenes: np.ndarray) -> None:
    spec = sam.spec
    assert (spec.name, spec.input_size, spec.grid, spec.channels, spec.cls_channels) == (
        "sam",
        64,
        (8, 8),
        32,
        None,
    )
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
    out = sam(as_batch(scenes))
    assert out.patch.shape == (2, 8, 8, 32) and out.cls is None
    # The features are the image encoder's output, channels last.
    with torch.inference_mode():
        direct = sam.model.image_encoder(sam.preprocess(as_batch(scenes)))
    torch.testing.assert_close(out.patch, direct.permute(0, 2, 3, 1), rtol=0, atol=0)


def test_tiny_is_deterministic_and_has_no_zero_tensors() -> None:
    a, b = build_tiny_sam().model.state_dict(), build_tiny_sam().model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(value.any() for value in a.values()), "an all-zero tensor would go untested by the round trip"


@pytest.mark.parametrize("model_type", ["vit_b", "vit_l", "vit_h"])
def test_builder_matches_segment_anything(model_type: str) -> None:
    """The parametrised builder gives the same keys and shapes as segment-anything's own builders."""
    with torch.device("meta"):
        official = sam_model_registry[model_type]()
    assert {k: tuple(v.shape) for k, v in official.state_dict().items()} == _arch_shapes(model_type)


@pytest.mark.parametrize("model_type", list(SAM_ARCHS))
def test_model_type_is_inferred_from_shapes(model_type: str) -> None:
    with torch.device("meta"):
        state = build_sam_model(SAM_ARCHS[model_type]).state_dict()
    assert infer_sam_type(state, "test") == model_type


def test_real_size_spec_is_read_from_the_model() -> None:
    with torch.device("meta"):
        model = build_sam_model(SAM_ARCHS["vit_h"])
    spec = SamTeacher(model).spec
    assert (spec.input_size, spec.grid, spec.channels, spec.cls_channels) == (1024, (64, 64), 256, None)


# --- hub path: checkpoint files -------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("prefix", ["", "tiny:"])
def test_checkpoint_round_trip(
    sam: SamTeacher, scenes: np.ndarray, tmp_path: Path, suffix: str, prefix: str
) -> None:
    path = tmp_path / f"sam_tiny{suffix}"
    state = {k: v.contiguous() for k, v in sam.model.state_dict().items()}
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    loaded = load_teacher("sam", source="hub", weights=f"{prefix}{path}", device="cpu")
    assert isinstance(loaded, SamTeacher) and loaded.spec == sam.spec
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    torch.testing.assert_close(loaded(as_batch(scenes)).patch, sam(as_batch(scenes)).patch, rtol=0, atol=0)


def test_missing_checkpoint_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"teacher 'sam'.*sam_vit_h_4b8939\.pth.*dl\.fbaipublicfiles"):
        load_teacher("sam", source="hub", device="cpu")  # the default: vit_h in the working directory
    with pytest.raises(FileNotFoundError, match=r"sam_vit_b_01ec64\.pth"):
        load_teacher("sam", source="hub", weights=f"vit_b:{tmp_path / 'absent.pth'}", device="cpu")
    with pytest.raises(ValueError, match=r"is a directory.*teacher 'sam_hf'"):
        load_teacher("sam", source="hub", weights=str(tmp_path), device="cpu")


def test_wrong_model_type_is_named(sam: SamTeacher, tmp_path: Path) -> None:
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in sam.model.state_dict().items()}, str(path))
    with pytest.raises(ValueError, match=r"teacher 'sam'.*not a vit_b checkpoint.*wrong shapes"):
        load_teacher("sam", source="hub", weights=f"vit_b:{path}", device="cpu")


@pytest.mark.parametrize("damage", ["missing", "unexpected", "shape"])
def test_damaged_checkpoint_is_refused(sam: SamTeacher, tmp_path: Path, damage: str) -> None:
    state = {k: v.clone() for k, v in sam.model.state_dict().items()}
    key = "image_encoder.neck.0.weight"
    if damage == "missing":
        del state[key]
    elif damage == "unexpected":
        state["image_encoder.extra.weight"] = torch.zeros(3)
    else:
        state[key] = torch.zeros(7, *state[key].shape[1:])
    path = tmp_path / "damaged.pth"
    torch.save(state, path)
    expected = {"missing": "missing keys", "unexpected": "unexpected keys", "shape": "wrong shapes"}[damage]
    with pytest.raises(
        ValueError, match=rf"matches no segment-anything model type.*closest is tiny: {expected}"
    ):
        load_teacher("sam", source="hub", weights=str(path), device="cpu")
    with pytest.raises(ValueError, match=rf"not a tiny checkpoint: {expected}"):
        load_teacher("sam", source="hub", weights=f"tiny:{path}", device="cpu")


def test_non_state_dict_files_are_refused(tmp_path: Path) -> None:
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], listed)
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        load_teacher("sam", source="hub", weights=str(listed), device="cpu")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"cannot read .* as a state dict"):
        load_teacher("sam", source="hub", weights=str(garbage), device="cpu")


# --- decoders: exactness against segment-anything's own end-to-end path --------------------------

PROMPTS = {
    "points": dict(points=[[20.0, 30.0], [41.0, 12.0]], point_labels=[1, 0], box=None),
    "box": dict(points=None, point_labels=None, box=[6.0, 9.0, 50.0, 58.0]),
    "points+box": dict(points=[[30.0, 33.0]], point_labels=[1], box=[6.0, 9.0, 50.0, 58.0]),
}


def decode_both(
    sam: SamTeacher, predictor: SamPredictor, embedding: torch.Tensor, prompt: str, multimask: bool, size: int
) -> tuple[np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]:
    """SamPredictor.predict (numpy prompts) and SamTeacher.predict_masks (batched tensors), same prompt."""
    p = PROMPTS[prompt]
    points = None if p["points"] is None else np.array(p["points"])
    labels = None if p["point_labels"] is None else np.array(p["point_labels"])
    box = None if p["box"] is None else np.array(p["box"])
    ref_masks, ref_scores, _ = predictor.predict(points, labels, box, multimask_output=multimask)
    masks, scores = sam.predict_masks(
        embedding,
        points=None if points is None else torch.tensor(points)[None],
        point_labels=None if labels is None else torch.tensor(labels)[None],
        boxes=None if box is None else torch.tensor(box)[None],
        multimask=multimask,
        image_size=size,
    )
    return ref_masks, ref_scores, masks, scores


@pytest.mark.parametrize("prompt", list(PROMPTS))
@pytest.mark.parametrize("multimask", [True, False])
def test_predict_masks_equals_sam_end_to_end(
    sam: SamTeacher, scenes: np.ndarray, prompt: str, multimask: bool
) -> None:
    """Masks from the teacher's own embedding equal SamPredictor.set_image + predict on the image."""
    teacher_embedding = sam(as_batch(scenes)).patch
    for b in range(len(scenes)):
        predictor, own = predictor_features(sam, scenes[b])
        torch.testing.assert_close(teacher_embedding[b : b + 1], own, rtol=1e-4, atol=1e-4)
        ref_masks, ref_scores, masks, scores = decode_both(
            sam, predictor, teacher_embedding[b : b + 1], prompt, multimask, SIZE
        )
        k = 3 if multimask else 1
        assert masks.shape == (1, k, SIZE, SIZE) and masks.dtype == torch.bool and scores.shape == (1, k)
        assert 0 < ref_masks.sum() < ref_masks.size, "a degenerate mask would make the comparison vacuous"
        np.testing.assert_array_equal(masks[0].numpy(), ref_masks)
        np.testing.assert_allclose(scores[0].numpy(), ref_scores, rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [SIZE, 48])
def test_predict_masks_is_bit_exact_on_sams_own_embedding(
    sam: SamTeacher, scenes: np.ndarray, size: int
) -> None:
    """Given SamPredictor's embedding, the decoder reproduces predict() bit for bit, also when the image
    is not at the model's input size (prompt and mask rescaling)."""
    image = np.array(render_scene(3, (size, size)))
    predictor, own = predictor_features(sam, image)
    for prompt in PROMPTS:
        ref_masks, ref_scores, masks, scores = decode_both(sam, predictor, own, prompt, True, size)
        assert masks.shape == (1, 3, size, size)
        np.testing.assert_array_equal(masks[0].numpy(), ref_masks)
        np.testing.assert_array_equal(scores[0].numpy(), ref_scores)


def test_predict_masks_batches_one_prompt_set_per_image(sam: SamTeacher, scenes: np.ndarray) -> None:
    embedding = sam(as_batch(scenes)).patch
    points = torch.tensor([[[20.0, 30.0]], [[40.0, 44.0]]])
    masks, scores = sam.predict_masks(embedding, points=points, multimask=False)
    logits, _ = sam.predict_masks(embedding, points=points, multimask=False, return_logits=True)
    assert masks.shape == (2, 1, SIZE, SIZE) and scores.shape == (2, 1)
    assert logits.dtype == torch.float32 and torch.equal(logits > sam.model.mask_threshold, masks)
    for b in range(2):
        single, single_scores = sam.predict_masks(
            embedding[b : b + 1], points=points[b : b + 1], multimask=False
        )
        assert torch.equal(single[0], masks[b]) and torch.equal(single_scores[0], scores[b])


AMG = dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.99)


def assert_same_records(ours: list[dict], reference: list[dict], score_atol: float) -> None:
    assert len(ours) == len(reference) > 1
    for mine, ref in zip(ours, reference, strict=True):
        assert mine.keys() == ref.keys()
        np.testing.assert_array_equal(mine["segmentation"], ref["segmentation"])
        for key in ("area", "bbox", "point_coords", "crop_box"):
            assert mine[key] == ref[key], key
        for key in ("predicted_iou", "stability_score"):
            assert mine[key] == pytest.approx(ref[key], abs=score_atol), key


def test_automatic_masks_equal_the_generator_on_the_image(sam: SamTeacher, scenes: np.ndarray) -> None:
    """SamAutomaticMaskGenerator with the teacher's embedding injected == the generator run on the image."""
    reference = SamAutomaticMaskGenerator(sam.model, **AMG).generate(scenes[0])
    ours = sam.automatic_masks(sam(as_batch(scenes[:1])).patch[0], SIZE, **AMG)
    assert_same_records(ours, reference, score_atol=1e-5)
    assert ours[0]["segmentation"].shape == (SIZE, SIZE) and ours[0]["segmentation"].dtype == bool
    # With segment-anything's own embedding the injected path is bit-exact.
    _, own = predictor_features(sam, scenes[0])
    assert_same_records(sam.automatic_masks(own[0], SIZE, **AMG), reference, score_atol=0.0)


def test_decoder_input_errors(sam: SamTeacher) -> None:
    embedding = torch.zeros(1, 8, 8, 32)
    with pytest.raises(ValueError, match=r"embedding must be \[B, 8, 8, 32\].*got \(1, 16, 16, 32\)"):
        sam.predict_masks(torch.zeros(1, 16, 16, 32), points=torch.zeros(1, 1, 2))
    with pytest.raises(ValueError, match="needs points and/or boxes"):
        sam.predict_masks(embedding)
    with pytest.raises(ValueError, match=r"points must be \[B=1, N, 2\]"):
        sam.predict_masks(embedding, points=torch.zeros(2, 1, 2))
    with pytest.raises(ValueError, match=r"boxes must be \[B=1, 4\]"):
        sam.predict_masks(embedding, boxes=torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"embedding must be \[8, 8, 32\]"):
        sam.automatic_masks(embedding, SIZE)


# --- sam_hf ----------------------------------------------------------------------------------------


def test_sam_hf_tiny_spec_and_features(scenes: np.ndarray) -> None:
    teacher = load_teacher("sam_hf", device="cpu")
    assert isinstance(teacher, SamHfTeacher)
    spec = teacher.spec
    assert (spec.name, spec.input_size, spec.grid, spec.channels, spec.cls_channels) == (
        "sam_hf",
        64,
        (8, 8),
        32,
        None,
    )
    out = teacher(as_batch(scenes))
    assert out.patch.shape == (2, 8, 8, 32) and out.cls is None
    assert out.patch.std() > 0.5, "the miniature must not be degenerate (transformers' SAM init is ~0)"
    with torch.inference_mode():
        direct = teacher.model.get_image_embeddings(teacher.preprocess(as_batch(scenes)))
    torch.testing.assert_close(out.patch, direct.permute(0, 2, 3, 1), rtol=0, atol=0)


def test_sam_hf_real_size_spec_is_read_from_the_config() -> None:
    from transformers import SamConfig, SamModel

    with torch.device("meta"):  # SamConfig() is the ViT-B layout of facebook/sam-vit-base: shapes only
        model = SamModel(SamConfig())
    spec = SamHfTeacher(model, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).spec
    assert (spec.input_size, spec.grid, spec.channels, spec.cls_channels) == (1024, (64, 64), 256, None)


def test_sam_hf_save_pretrained_round_trip(scenes: np.ndarray, tmp_path: Path) -> None:
    tiny = build_tiny_sam_hf()
    tiny.model.save_pretrained(tmp_path)
    loaded = load_teacher("sam_hf", source="hub", weights=str(tmp_path), device="cpu")
    assert loaded.spec == tiny.spec
    torch.testing.assert_close(
        loaded(as_batch(scenes)).patch, tiny.freeze()(as_batch(scenes)).patch, rtol=0, atol=0
    )


def test_sam_hf_load_errors(tmp_path: Path) -> None:
    with pytest.raises(OSError, match=r"teacher 'sam_hf'.*facebook/no-such-sam"):
        load_teacher("sam_hf", source="hub", weights="facebook/no-such-sam", device="cpu")
    build_tiny_depth_anything().model.save_pretrained(tmp_path / "depth")
    with pytest.raises(ValueError, match=r"teacher 'sam_hf'.*'depth_anything' checkpoint"):
        load_teacher("sam_hf", source="hub", weights=str(tmp_path / "depth"), device="cpu")
    build_tiny_sam_hf().model.save_pretrained(tmp_path / "sam")
    weights = tmp_path / "sam" / "model.safetensors"
    state = load_file(str(weights))
    del state["vision_encoder.neck.conv1.weight"]
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(
        ValueError, match=r"teacher 'sam_hf'.*missing keys: vision_encoder\.neck\.conv1\.weight"
    ):
        load_teacher("sam_hf", source="hub", weights=str(tmp_path / "sam"), device="cpu")
