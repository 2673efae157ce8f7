"""SAM's decoders on a given embedding: prompted masks and segment-everything.

The embedding (from the teacher or from a student) is placed in a ``SamPredictor``'s state where
its ``set_image`` would have put the image encoder's output; everything after it (prompt
transforms, prompt encoder, mask decoder, ``SamAutomaticMaskGenerator``, mask post-processing) is
segment-anything's own code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from segment_anything.automatic_mask_generator import SamAutomaticMaskGenerator
from segment_anything.modeling import Sam
from segment_anything.predictor import SamPredictor

from distill.features import TeacherSpec


class _EmbeddingPredictor(SamPredictor):
    """A ``SamPredictor`` whose image embedding comes from outside instead of its image encoder.

    ``set_image`` (which ``SamAutomaticMaskGenerator`` calls) reads only the image's size and
    installs ``self.embedding``; everything after it (prompt transforms, prompt encoder, mask
    decoder, mask post-processing) is segment-anything's own code.
    """

    def __init__(self, model: Sam) -> None:
        super().__init__(model)
        self.embedding: torch.Tensor | None = None

    def install(self, embedding: torch.Tensor, original_size: tuple[int, int]) -> None:
        """Put ``embedding`` [1, C, h, w] where ``set_torch_image`` puts the encoder output."""
        self.reset_image()
        self.original_size = original_size
        self.input_size = self.transform.get_preprocess_shape(
            *original_size, self.model.image_encoder.img_size
        )
        self.features = embedding
        self.is_image_set = True

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        if self.embedding is None:
            raise RuntimeError("_EmbeddingPredictor.set_image called before an embedding was given")
        self.install(self.embedding, (int(image.shape[0]), int(image.shape[1])))


def _as_numpy(values: torch.Tensor | np.ndarray | Sequence[Any], dtype: type) -> np.ndarray:
    """Prompt coordinates or labels (tensor, array or nested lists) as a CPU numpy array."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype)


def embedding_nchw(
    spec: TeacherSpec, device: torch.device, embedding: torch.Tensor, batched: bool
) -> torch.Tensor:
    """Check a ``[B, h, w, C]`` (or ``[h, w, C]``) embedding against the spec -> ``[B, C, h, w]``."""
    h, w = spec.grid
    expected = ("[B, " if batched else "[") + f"{h}, {w}, {spec.channels}]"
    shape = tuple(embedding.shape)
    if shape[-3:] != (h, w, spec.channels) or embedding.ndim != (4 if batched else 3):
        raise ValueError(
            f"teacher {spec.name!r}: embedding must be {expected} (patch layout of TeacherOutput), "
            f"got {shape}; resample a smaller predicted grid to {h}x{w} before decoding"
        )
    x = embedding if batched else embedding[None]
    return x.to(device, torch.float32).permute(0, 3, 1, 2).contiguous()


PromptArrays = tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]


def check_prompts(
    spec: TeacherSpec,
    batch: int,
    points: torch.Tensor | np.ndarray | None,
    point_labels: torch.Tensor | np.ndarray | None,
    boxes: torch.Tensor | np.ndarray | None,
) -> PromptArrays:
    """One prompt set per image, checked: points [B, N, 2] float64, labels [B, N] (all 1 when omitted),
    boxes [B, 4] float64; each None when not given."""
    if points is None and boxes is None:
        raise ValueError(f"teacher {spec.name!r}: predict_masks needs points and/or boxes as prompts")
    coords = labels = box_np = None
    if points is not None:
        coords = _as_numpy(points, np.float64)
        if coords.ndim != 3 or coords.shape[0] != batch or coords.shape[2] != 2:
            raise ValueError(f"points must be [B={batch}, N, 2] (x, y) pixels, got {coords.shape}")
        labels = np.ones(coords.shape[:2]) if point_labels is None else _as_numpy(point_labels, np.int64)
        if labels.shape != coords.shape[:2]:
            raise ValueError(f"point_labels must be [B, N] = {coords.shape[:2]}, got {labels.shape}")
    elif point_labels is not None:
        raise ValueError("point_labels were given without points")
    if boxes is not None:
        box_np = _as_numpy(boxes, np.float64)
        if box_np.shape != (batch, 4):
            raise ValueError(f"boxes must be [B={batch}, 4] XYXY pixels, got {box_np.shape}")
    return coords, labels, box_np


def predict_masks(
    model: Sam,
    spec: TeacherSpec,
    features: torch.Tensor,
    points: torch.Tensor | np.ndarray | None,
    point_labels: torch.Tensor | np.ndarray | None,
    boxes: torch.Tensor | np.ndarray | None,
    multimask: bool,
    size: int,
    return_logits: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks for one prompt set per embedding of ``features`` [B, C, h, w]; see ``SamTeacher.predict_masks``."""
    batch = features.shape[0]
    # Prompts stay float64 numpy until SAM's own numpy transforms have mapped them to the model
    # frame, exactly as SamPredictor.predict does (a float32 transform rounds differently).
    coords, labels, box_np = check_prompts(spec, batch, points, point_labels, boxes)
    predictor = _EmbeddingPredictor(model)
    transform, frame, device = predictor.transform, (size, size), features.device
    all_masks, all_scores = [], []
    for b in range(batch):
        predictor.install(features[b : b + 1], frame)
        masks, scores, _ = predictor.predict_torch(
            None
            if coords is None
            else torch.as_tensor(
                transform.apply_coords(coords[b : b + 1], frame), dtype=torch.float, device=device
            ),
            None if labels is None else torch.as_tensor(labels[b : b + 1], dtype=torch.int, device=device),
            None
            if box_np is None
            else torch.as_tensor(transform.apply_boxes(box_np[b], frame), dtype=torch.float, device=device),
            multimask_output=multimask,
            return_logits=return_logits,
        )
        all_masks.append(masks[0])
        all_scores.append(scores[0])
    return torch.stack(all_masks), torch.stack(all_scores)


def check_hole_filling(settings: dict[str, Any]) -> None:
    """``min_mask_region_area > 0`` runs segment-anything's hole filling, which needs OpenCV: say so up front."""
    if settings["min_mask_region_area"] > 0:
        try:
            import cv2  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                "min_mask_region_area > 0 needs OpenCV (segment-anything's hole filling); "
                "pip install opencv-python-headless, or pass min_mask_region_area=0"
            ) from exc


def automatic_masks(
    model: Sam, features: torch.Tensor, image_size: int, settings: dict[str, Any]
) -> list[dict[str, Any]]:
    """``SamAutomaticMaskGenerator(model, **settings)`` on one embedding [1, C, h, w] of a square
    ``image_size`` view; see ``SamTeacher.automatic_masks``."""
    check_hole_filling(settings)
    generator = SamAutomaticMaskGenerator(model, output_mode="binary_mask", **settings)
    predictor = _EmbeddingPredictor(model)
    predictor.embedding = features
    generator.predictor = predictor
    # With the encoder bypassed, the generator reads only the image's size (for the one crop).
    records: list[dict[str, Any]] = generator.generate(np.zeros((image_size, image_size, 3), dtype=np.uint8))
    return records
