"""SAM masks from SAM image embeddings (the student's predicted ones or SAM's own).

Both rows of a grid go through the same segment-anything prompt encoder and mask decoder with the
same :class:`MaskSettings` and :class:`Prompts`, so any difference between them comes from the
embeddings alone. Prompt coordinates are pixels of the canonical ``S x S`` view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class MaskDecoding(Protocol):
    """What decoding needs from a SAM-like teacher (``distill.teachers.sam.SamTeacher``)."""

    def predict_masks(
        self,
        embedding: torch.Tensor,
        points: torch.Tensor | None = ...,
        point_labels: torch.Tensor | None = ...,
        boxes: torch.Tensor | None = ...,
        multimask: bool = ...,
        image_size: int | None = ...,
        return_logits: bool = ...,
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def automatic_masks(
        self,
        embedding: torch.Tensor,
        image_size: int,
        *,
        points_per_side: int = ...,
        points_per_batch: int = ...,
        pred_iou_thresh: float = ...,
        stability_score_thresh: float = ...,
        stability_score_offset: float = ...,
        box_nms_thresh: float = ...,
        min_mask_region_area: int = ...,
    ) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class MaskSettings:
    """segment-anything's automatic generator settings; defaults are Meta's (tuned for ViT-H).

    An untrained or tiny student rarely clears the default quality thresholds; lower them (e.g.
    ``pred_iou_thresh=0, stability_score_thresh=0``) to see what its embedding decodes to.
    """

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    box_nms_thresh: float = 0.7

    def __post_init__(self) -> None:
        if self.points_per_side <= 0 or self.points_per_batch <= 0:
            raise ValueError(f"points_per_side and points_per_batch must be positive, got {self}")
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")


@dataclass(frozen=True)
class Prompts:
    """Point and box prompts in canonical-view pixels.

    All points together prompt one object (label 1 foreground, 0 background, as in SAM); each box
    prompts one more object. A single point is ambiguous, so it asks SAM for three masks and keeps
    the one with the highest predicted IoU; anything else asks for one mask (SAM's own advice).
    """

    points: tuple[tuple[float, float, int], ...] = ()  # (x, y, label)
    boxes: tuple[tuple[float, float, float, float], ...] = ()  # (x0, y0, x1, y1)

    def __bool__(self) -> bool:
        return bool(self.points or self.boxes)

    def check(self, image_size: int) -> None:
        """Fail with the offending prompt when it lies outside the ``image_size`` view or is malformed."""
        for x, y, label in self.points:
            if not (0 <= x < image_size and 0 <= y < image_size) or label not in (0, 1):
                raise ValueError(
                    f"point ({x}, {y}, label {label}) must lie in the {image_size}x{image_size} canonical view "
                    "(pixels, origin top-left) with label 1 (foreground) or 0 (background)"
                )
        if self.points and not any(label == 1 for _, _, label in self.points):
            raise ValueError("point prompts need at least one foreground point (label 1)")
        for x0, y0, x1, y1 in self.boxes:
            if not (0 <= x0 < x1 <= image_size and 0 <= y0 < y1 <= image_size):
                raise ValueError(
                    f"box ({x0}, {y0}, {x1}, {y1}) must satisfy 0 <= x0 < x1 <= {image_size} and "
                    f"0 <= y0 < y1 <= {image_size} (canonical-view pixels)"
                )


def parse_point(text: str) -> tuple[float, float, int]:
    """``"x,y"`` or ``"x,y,label"`` -> (x, y, label)."""
    parts = text.split(",")
    try:
        if len(parts) == 2:
            return float(parts[0]), float(parts[1]), 1
        if len(parts) == 3:
            return float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        pass
    raise ValueError(
        f"point {text!r} must be 'x,y' or 'x,y,label' (numbers; label 1 foreground, 0 background)"
    )


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` -> the box."""
    parts = text.split(",")
    try:
        if len(parts) == 4:
            x0, y0, x1, y1 = (float(p) for p in parts)
            return x0, y0, x1, y1
    except ValueError:
        pass
    raise ValueError(f"box {text!r} must be 'x0,y0,x1,y1' (numbers, canonical-view pixels)")


def automatic_masks(
    teacher: MaskDecoding, embeddings: torch.Tensor, image_size: int, settings: MaskSettings
) -> list[list[dict[str, Any]]]:
    """Embeddings [T, h, w, C] -> per frame, segment-anything's automatic mask records (unaltered)."""
    return [
        teacher.automatic_masks(
            embedding,
            image_size,
            points_per_side=settings.points_per_side,
            points_per_batch=settings.points_per_batch,
            pred_iou_thresh=settings.pred_iou_thresh,
            stability_score_thresh=settings.stability_score_thresh,
            box_nms_thresh=settings.box_nms_thresh,
        )
        for embedding in embeddings
    ]


def prompted_masks(
    teacher: MaskDecoding, embeddings: torch.Tensor, prompts: Prompts, image_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings [T, h, w, C] -> masks [T, K, S, S] bool and predicted IoU [T, K], one per prompted object."""
    prompts.check(image_size)
    batch = embeddings.shape[0]
    masks, scores = [], []
    if prompts.points:
        coords = torch.tensor([[x, y] for x, y, _ in prompts.points], dtype=torch.float32)
        labels = torch.tensor([label for _, _, label in prompts.points], dtype=torch.int32)
        single = len(prompts.points) == 1
        m, s = teacher.predict_masks(
            embeddings,
            points=coords.expand(batch, -1, -1),
            point_labels=labels.expand(batch, -1),
            multimask=single,
            image_size=image_size,
        )
        best = s.argmax(dim=1)  # with one mask per prompt this is 0
        rows = torch.arange(batch, device=best.device)
        masks.append(m[rows, best])
        scores.append(s[rows, best])
    for box in prompts.boxes:
        m, s = teacher.predict_masks(
            embeddings,
            boxes=torch.tensor(box, dtype=torch.float32).expand(batch, -1),
            multimask=False,
            image_size=image_size,
        )
        masks.append(m[:, 0])
        scores.append(s[:, 0])
    if not masks:
        raise ValueError("prompted_masks needs at least one point or box")
    return torch.stack(masks, 1).bool().cpu(), torch.stack(scores, 1).float().cpu()
