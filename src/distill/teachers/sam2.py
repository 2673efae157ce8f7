"""Teacher family ``sam2`` (transformers ``Sam2Model``): the image embedding, and SAM 2's mask decoder.

Target: the image embedding the mask decoder reads (``[B, 256, 64, 64]`` at 1024 px for the released
models: the last FPN level with SAM 2's "no memory" embedding added, as ``Sam2Model.get_image_embeddings``
returns it), as ``patch [B, h, w, C]``; SAM 2 has no summary token, so ``cls`` is None.

Decoding (:mod:`distill.teachers.sam2_decode`): ``predict_masks`` (points and/or boxes) and
``automatic_masks`` (segment everything), with the same signatures as ``sam``'s. SAM 2's decoder also
reads two high-resolution encoder levels; a decoded embedding comes without them and is decoded with
zeros there, while ``image_levels`` gives the teacher's own three levels, with which ``predict_masks``
reproduces ``Sam2Model``'s masks from pixels exactly.

Geometry: SAM 2 resizes to a square (``image_size``, 1024), so the canonical view is resized without
padding; mean/std from ``preprocessor_config.json``, else ImageNet's. ``weights``: a hub id (default
``facebook/sam2.1-hiera-large``) or a local ``save_pretrained`` directory of a ``sam2`` checkpoint.
Tiny: a 5-block Hiera at 64 px with stride-2 patches, FPN width 32: an 8x8 x 32 embedding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import Sam2Config, Sam2Model
from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from distill.features import TeacherOutput, TeacherSpec
from distill.teachers import sam2_decode
from distill.teachers._hf import load_pretrained, normalization, read_preprocessor, seeded, square_size
from distill.teachers.base import Teacher
from distill.teachers.registry import TeacherEntry, register_teacher
from distill.teachers.sam_decode import check_prompts, embedding_nchw

NAME = "sam2"
DEFAULT_WEIGHTS = "facebook/sam2.1-hiera-large"


def tiny_config() -> Sam2Config:
    """The tiny teacher's config: every Hiera stage, FPN level and decoder part of the real one, miniature."""
    backbone = {
        "model_type": "sam2_hiera_det_model",
        "hidden_size": 8,
        "image_size": [64, 64],
        "patch_kernel_size": [3, 3],
        "patch_stride": [2, 2],
        "patch_padding": [1, 1],
        "blocks_per_stage": [1, 1, 2, 1],
        "embed_dim_per_stage": [8, 16, 32, 64],
        "num_attention_heads_per_stage": [1, 1, 2, 2],
        "window_size_per_stage": [4, 4, 4, 2],
        "global_attention_blocks": [3],
        "window_positional_embedding_background_size": [4, 4],
    }
    vision = {
        "backbone_config": backbone,
        "backbone_channel_list": [64, 32, 16, 8],
        "backbone_feature_sizes": [[32, 32], [16, 16], [8, 8]],
        "fpn_hidden_size": 32,
    }
    prompt = {"hidden_size": 32, "image_size": 64, "patch_size": 8, "mask_input_channels": 8}
    decoder = {
        "hidden_size": 32,
        "mlp_dim": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "iou_head_hidden_dim": 32,
    }
    return Sam2Config(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def sam2_spec(config: Any, preprocessor: dict[str, Any]) -> TeacherSpec:
    """Input size from the Hiera backbone, grid from the last FPN level, channels = FPN width."""
    vision = config.vision_config
    size = square_size(vision.backbone_config.image_size, "sam2 image_size")
    height, width = (int(v) for v in vision.backbone_feature_sizes[-1])
    prompt_grid = config.prompt_encoder_config.image_size // config.prompt_encoder_config.patch_size
    if (height, width) != (prompt_grid, prompt_grid):
        raise ValueError(
            f"teacher {NAME!r}: the image embedding is {height}x{width} but the prompt encoder expects "
            f"{prompt_grid}x{prompt_grid}; the checkpoint's config is inconsistent"
        )
    mean, std = normalization(preprocessor, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    return TeacherSpec(
        name=NAME,
        input_size=size,
        mean=mean,
        std=std,
        grid=(height, width),
        channels=int(vision.fpn_hidden_size),
        cls_channels=None,
    )


class Sam2Teacher(Teacher):
    """SAM 2: the mask decoder's image embedding as features, plus its prompt encoder and mask decoder."""

    def __init__(self, model: Sam2Model, spec: TeacherSpec) -> None:
        super().__init__(spec)
        self.model = model

    def encode(self, pixel_values: torch.Tensor) -> TeacherOutput:
        embedding = self.model.get_image_embeddings(pixel_values)[-1]  # [B, C, h, w]
        return TeacherOutput(patch=embedding.permute(0, 2, 3, 1).contiguous(), cls=None)

    @torch.inference_mode()
    def image_levels(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The three levels the decoder reads, [high-res 0, high-res 1, embedding], for canonical-view images."""
        levels: list[torch.Tensor] = self.model.get_image_embeddings(self.preprocess(images))
        return levels

    @torch.inference_mode()
    def predict_masks(
        self,
        embedding: torch.Tensor,
        points: torch.Tensor | np.ndarray | None = None,
        point_labels: torch.Tensor | np.ndarray | None = None,
        boxes: torch.Tensor | np.ndarray | None = None,
        multimask: bool = True,
        image_size: int | None = None,
        return_logits: bool = False,
        high_res: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks for point and/or box prompts, one prompt set per image (``SamTeacher.predict_masks``'s contract).

        ``embedding`` [B, h, w, C]; ``points`` [B, N, 2] (x, y) pixels of the square ``image_size`` view
        (default: the teacher's input size) with ``point_labels`` [B, N] (1 foreground, 0 background);
        ``boxes`` [B, 4] XYXY pixels. ``high_res``: the teacher's two high-resolution levels
        (``image_levels(images)[:2]``), zeros when omitted. Returns masks [B, K, S, S] (bool, or logits
        with ``return_logits``) and predicted IoU [B, K]; K is 3 with ``multimask`` else 1.
        """
        features = embedding_nchw(self.spec, self.device, embedding, batched=True)
        size = image_size or self.spec.input_size
        coords, labels, box_np = check_prompts(self.spec, features.shape[0], points, point_labels, boxes)
        scale = self.spec.input_size / size  # view pixels -> model-input pixels (both square)
        device = features.device
        logits, scores = sam2_decode.decode(
            self.model,
            [*(high_res or sam2_decode.zero_high_res(features)), features],
            None
            if coords is None
            else torch.as_tensor(coords * scale, dtype=torch.float, device=device)[:, None],
            None if labels is None else torch.as_tensor(labels, dtype=torch.int, device=device)[:, None],
            None
            if box_np is None
            else torch.as_tensor(box_np * scale, dtype=torch.float, device=device)[:, None],
            multimask,
            size,
        )
        masks = logits[:, 0]
        return (masks if return_logits else masks > sam2_decode.MASK_THRESHOLD), scores[:, 0]

    @torch.inference_mode()
    def automatic_masks(
        self,
        embedding: torch.Tensor,
        image_size: int,
        *,
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        min_mask_region_area: int = 0,
        high_res: list[torch.Tensor] | None = None,
    ) -> list[dict[str, Any]]:
        """Segment everything on one embedding [h, w, C] of a square ``image_size`` view: segment-anything's
        automatic generator over SAM 2's decoder; records as ``SamTeacher.automatic_masks`` returns them."""
        features = embedding_nchw(self.spec, self.device, embedding, batched=False)
        settings: dict[str, Any] = {
            "points_per_side": points_per_side,
            "points_per_batch": points_per_batch,
            "pred_iou_thresh": pred_iou_thresh,
            "stability_score_thresh": stability_score_thresh,
            "stability_score_offset": stability_score_offset,
            "box_nms_thresh": box_nms_thresh,
            "min_mask_region_area": min_mask_region_area,
        }
        levels = [*(high_res or sam2_decode.zero_high_res(features)), features]
        return sam2_decode.automatic_masks(self.model, levels, self.spec.input_size, image_size, settings)


def build_tiny() -> Sam2Teacher:
    """Seeded random-init Sam2Model miniature; its all-zero inits (position embeddings, biases, the
    no-memory embedding) are drawn at random too, so round trips and exactness tests see every tensor."""
    with seeded(0):
        model = Sam2Model(tiny_config()).eval()
        with torch.no_grad():
            for param in model.parameters():
                if not param.any():
                    param.normal_(0.0, 0.02)
    return Sam2Teacher(model, sam2_spec(model.config, {}))


def load_weights(weights: str) -> Sam2Teacher:
    """A hub id or local ``save_pretrained`` directory of a ``sam2`` checkpoint, loaded strictly."""
    model = load_pretrained(NAME, weights, {"sam2": Sam2Model})
    return Sam2Teacher(model, sam2_spec(model.config, read_preprocessor(weights)))


register_teacher(TeacherEntry(NAME, DEFAULT_WEIGHTS, build_tiny, load_weights, decoder="masks"))
