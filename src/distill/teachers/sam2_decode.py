"""SAM 2's prompt encoder and mask decoder on given image features: prompted and automatic masks.

SAM 2's mask decoder reads three feature levels: the image embedding (the distillation target,
``[B, C, h, w]``) and two high-resolution levels from the encoder's earlier stages (``[B, C/8, 4h, 4w]``
and ``[B, C/4, 2h, 2w]``, already through the decoder's ``conv_s0``/``conv_s1``), which it adds while
upsampling the masks. A student predicts the embedding only, so its masks are decoded with zero
high-resolution features (:func:`zero_high_res`); the teacher's own levels can be passed to reproduce
the teacher's masks exactly. Decoding is ``Sam2Model.forward`` with ``image_embeddings`` given,
low-resolution logits upsampled the way ``Sam2ImageProcessor.post_process_masks`` does (bilinear to
the view, threshold 0). Automatic masks are segment-anything's ``SamAutomaticMaskGenerator`` driving
SAM 2's decoder through :class:`Sam2Predictor`, the part of ``SamPredictor`` the generator uses.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.automatic_mask_generator import SamAutomaticMaskGenerator
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide
from transformers import Sam2Model

from distill.teachers.sam_decode import check_hole_filling

MASK_THRESHOLD = 0.0  # SAM 2's logit threshold (Sam2ImageProcessor.post_process_masks)


def zero_high_res(embedding: torch.Tensor) -> list[torch.Tensor]:
    """The two high-resolution levels as zeros, for an embedding ``[B, C, h, w]`` that comes without them."""
    batch, channels, height, width = embedding.shape
    return [
        embedding.new_zeros(batch, channels // 8, 4 * height, 4 * width),
        embedding.new_zeros(batch, channels // 4, 2 * height, 2 * width),
    ]


def decode(
    model: Sam2Model,
    levels: list[torch.Tensor],
    points: torch.Tensor | None,
    labels: torch.Tensor | None,
    boxes: torch.Tensor | None,
    multimask: bool,
    size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask logits ``[B, P, K, size, size]`` and IoU ``[B, P, K]`` for prompts in the model's input frame.

    ``levels`` = [high-res 0, high-res 1, embedding]; ``points`` [B, P, N, 2] with ``labels`` [B, P, N],
    ``boxes`` [B, P, 4] (P prompt sets per image).
    """
    out = model(
        image_embeddings=levels,
        input_points=points,
        input_labels=labels,
        input_boxes=boxes,
        multimask_output=multimask,
    )
    low_res = out.pred_masks  # [B, P, K, h', w']
    batch, prompts = low_res.shape[:2]
    logits = F.interpolate(low_res.flatten(0, 1), (size, size), mode="bilinear", align_corners=False)
    return logits.unflatten(0, (batch, prompts)), out.iou_scores


class Sam2Predictor:
    """What ``SamAutomaticMaskGenerator`` calls on its predictor, answered by SAM 2's decoder on fixed levels.

    ``set_image`` only records the view's size (the features are given); ``predict_torch`` takes the
    generator's points (already in the model frame through ``transform``) as one prompt set each.
    """

    def __init__(self, model: Sam2Model, levels: list[torch.Tensor], input_size: int) -> None:
        self.sam2 = model
        self.levels = levels
        self.transform = ResizeLongestSide(input_size)
        self.device = levels[-1].device
        self.model = SimpleNamespace(
            mask_threshold=MASK_THRESHOLD
        )  # the generator reads model.mask_threshold
        self.size = 0

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        if image.shape[0] != image.shape[1]:
            raise ValueError(f"SAM 2 decoding takes the square canonical view, got {image.shape[:2]}")
        self.size = int(image.shape[0])

    def reset_image(self) -> None:
        self.size = 0

    def predict_torch(
        self,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, None]:
        """``point_coords`` [P, N, 2] model-frame pixels -> masks [P, K, S, S], IoU [P, K] (``SamPredictor``'s contract)."""
        if boxes is not None or mask_input is not None:
            raise ValueError("the automatic generator drives SAM 2 with point prompts only")
        logits, scores = decode(
            self.sam2,
            self.levels,
            point_coords[None].float(),
            point_labels[None].int(),
            None,
            multimask_output,
            self.size,
        )
        masks = logits[0] if return_logits else logits[0] > MASK_THRESHOLD
        return masks, scores[0], None


def automatic_masks(
    model: Sam2Model, levels: list[torch.Tensor], input_size: int, image_size: int, settings: dict[str, Any]
) -> list[dict[str, Any]]:
    """segment-anything's automatic generator on one image's levels (batch 1); records in its format."""
    check_hole_filling(settings)
    predictor = Sam2Predictor(model, levels, input_size)
    # The generator's constructor builds a SamPredictor, which reads only image_encoder.img_size.
    stand_in = cast(Sam, SimpleNamespace(image_encoder=SimpleNamespace(img_size=input_size)))
    generator = SamAutomaticMaskGenerator(stand_in, output_mode="binary_mask", **settings)
    generator.predictor = predictor
    records: list[dict[str, Any]] = generator.generate(np.zeros((image_size, image_size, 3), dtype=np.uint8))
    return records
