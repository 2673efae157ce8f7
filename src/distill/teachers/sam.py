"""Teacher family ``sam`` (segment-anything): the image encoder's output as features, and SAM's decoders.

Target features: the image encoder's output (``[B, 256, 64, 64]`` for the official models at
1024 px), returned as ``patch [B, h, w, C]``; SAM has no summary token, so ``cls`` is None.

The canonical view is already square, so SAM's "resize the long side and pad" preprocessing
reduces to a resize to ``image_encoder.img_size`` (no padding) and SAM's pixel mean/std, which
``TeacherSpec`` holds in [0, 1] units.

Model types: :mod:`distill.teachers.sam_arch`; weights strings, strict loading and type
inference: :mod:`distill.teachers.sam_checkpoint`; the decoders ``SamTeacher.predict_masks`` and
``SamTeacher.automatic_masks`` run :mod:`distill.teachers.sam_decode`. The transformers
alternative for feature extraction only is ``sam_hf`` (:mod:`distill.teachers.sam_hf`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from segment_anything.modeling import Sam

from distill.features import TeacherOutput, TeacherSpec
from distill.teachers import sam_decode
from distill.teachers._hf import seeded
from distill.teachers.base import Teacher
from distill.teachers.registry import TeacherEntry, register_teacher
from distill.teachers.sam_arch import SAM_ARCHS, TINY_SEED, build_sam_model, unit_rgb
from distill.teachers.sam_checkpoint import load_sam_model


class SamTeacher(Teacher):
    """segment-anything ``Sam``: image encoder output as features, plus its prompt mask decoders."""

    def __init__(self, model: Sam) -> None:
        encoder = model.image_encoder
        patch = int(encoder.patch_embed.proj.kernel_size[0])
        grid = int(encoder.img_size) // patch
        spec = TeacherSpec(
            name="sam",
            input_size=int(encoder.img_size),
            mean=unit_rgb(model.pixel_mean),
            std=unit_rgb(model.pixel_std),
            grid=(grid, grid),
            channels=int(encoder.neck[0].out_channels),
            cls_channels=None,
        )
        super().__init__(spec)
        self.model = model

    def encode(self, pixel_values: torch.Tensor) -> TeacherOutput:
        embedding = self.model.image_encoder(pixel_values)  # [B, C, h, w]
        return TeacherOutput(patch=embedding.permute(0, 2, 3, 1).contiguous(), cls=None)

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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks for point and/or box prompts, one prompt set per image, through SAM's own decoder.

        ``embedding`` [B, h, w, C]; ``points`` [B, N, 2] as (x, y) pixels and ``point_labels``
        [B, N] (1 foreground, 0 background; all foreground when omitted); ``boxes`` [B, 4] as XYXY
        pixels. Coordinates refer to the square ``image_size`` view the masks come back at
        (default: the teacher's input size). Returns ``masks`` [B, K, S, S] (bool, or float logits
        with ``return_logits``) and the predicted IoU ``scores`` [B, K]; K is 3 with ``multimask``
        else 1.
        """
        features = sam_decode.embedding_nchw(self.spec, self.device, embedding, batched=True)
        size = image_size or self.spec.input_size
        return sam_decode.predict_masks(
            self.model, self.spec, features, points, point_labels, boxes, multimask, size, return_logits
        )

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
    ) -> list[dict[str, Any]]:
        """Segment everything: segment-anything's ``SamAutomaticMaskGenerator`` on one embedding.

        ``embedding`` [h, w, C] of a square ``image_size`` view. Thresholds are the generator's
        own (defaults tuned by Meta for ViT-H). Returns its mask records: ``segmentation`` (bool
        [S, S] numpy), ``area``, ``bbox`` (XYWH), ``predicted_iou``, ``point_coords``,
        ``stability_score``, ``crop_box``. Multi-crop mode is not offered: each crop would need its
        own encoder pass, which a precomputed embedding cannot give.
        """
        features = sam_decode.embedding_nchw(self.spec, self.device, embedding, batched=False)
        settings: dict[str, Any] = {
            "points_per_side": points_per_side,
            "points_per_batch": points_per_batch,
            "pred_iou_thresh": pred_iou_thresh,
            "stability_score_thresh": stability_score_thresh,
            "stability_score_offset": stability_score_offset,
            "box_nms_thresh": box_nms_thresh,
            "min_mask_region_area": min_mask_region_area,
        }
        return sam_decode.automatic_masks(self.model, features, image_size, settings)


def load_sam_checkpoint(weights: str) -> SamTeacher:
    """A ``SamTeacher`` from ``[MODEL_TYPE:]PATH`` (``.pth`` or ``.safetensors``), loaded strictly."""
    return SamTeacher(load_sam_model(weights))


def build_tiny_sam() -> SamTeacher:
    """The ``tiny`` model type with a fixed seed; every all-zero init (pos_embed, rel_pos, biases)
    is drawn at random too, so round trip and exactness tests exercise every tensor."""
    with seeded(TINY_SEED):
        model = build_sam_model(SAM_ARCHS["tiny"])
        with torch.no_grad():
            for param in model.parameters():
                if not param.any():
                    param.normal_(0.0, 0.02)
    return SamTeacher(model)


register_teacher(
    TeacherEntry(
        name="sam",
        default_weights="vit_h:sam_vit_h_4b8939.pth",
        build_tiny=build_tiny_sam,
        load_weights=load_sam_checkpoint,
        decoder="masks",
    )
)
