"""The multi-teacher distillation objective on stats-normalised features.

Per teacher ``t`` with weight ``w_t``::

    t/total = w_t * (patch_cos * t/patch_cos + patch_l1 * t/patch_l1 + cls_cos * t/cls_cos)

and ``pixels/total = pixel_mse * pixels/mse / pixel_scale``; with a VQ quantiser
``quantizer/total = commit * quantizer/commit`` (the commitment loss); the loss is the sum of the totals. A weight of zero
drops the term from the graph entirely (its head gets no gradient, and a NaN there cannot poison
the total); its raw value is still reported for logging.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch

from distill.features import TeacherOutput
from distill.losses.cosine import cosine_distance
from distill.losses.patch import PatchTerms, patch_terms
from distill.losses.pixel import pixel_mse

if TYPE_CHECKING:
    from distill.models.student import StudentOutput


@dataclass(frozen=True)
class LossConfig:
    """Weights of each loss term and of each teacher."""

    patch_cos: float = 1.0  # per-token cosine distance
    patch_l1: float = 1.0  # per-element smooth L1
    cls_cos: float = 1.0  # summary (CLS) cosine distance, for teachers that have a CLS
    pixel_mse: float = 1.0  # used when the student has a pixel head
    # The pixel MSE is divided by this: the MSE of the mean training image (the trainer measures it),
    # so the pixel term starts near 1 like a teacher term instead of ~0.005 on mostly static frames.
    pixel_scale: float = 1.0
    # Keypoint sprites' search term (KeypointSprites.search: the pixel-error change were each sprite drawn
    # where its keypoint's softmax looks), relative to the pixel term: its weight is sprite_search * pixel_mse,
    # so switching the pixel term off switches the search off too.
    sprite_search: float = 1.0
    # Its assignment part (SpriteSearch.assignment, a cross-entropy in nats, not divided by pixel_scale):
    # weight sprite_assign * pixel_mse.
    sprite_assign: float = 0.1
    # The assignment fades linearly from sprite_assign at step 0 to zero at this optimiser step (0: it never
    # fades). It moves keypoints onto their objects early; once there, the search's change term holds them.
    sprite_assign_fade_steps: int = 0
    smooth_l1_beta: float = 1.0  # where smooth L1 turns from quadratic to linear (normalised units)
    commit: float = 0.25  # VQ commitment loss weight (beta of van den Oord et al.), pulls z to its codes
    teacher_weights: Mapping[str, float] = field(default_factory=dict)  # teachers not listed weigh 1.0

    def __post_init__(self) -> None:
        named = {
            "patch_cos": self.patch_cos,
            "patch_l1": self.patch_l1,
            "cls_cos": self.cls_cos,
            "pixel_mse": self.pixel_mse,
            "sprite_search": self.sprite_search,
            "sprite_assign": self.sprite_assign,
            "commit": self.commit,
        }
        named |= {f"teacher_weights[{name!r}]": weight for name, weight in self.teacher_weights.items()}
        for name, value in named.items():
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"loss weight {name} must be finite and >= 0, got {value}")
        if not (math.isfinite(self.pixel_scale) and self.pixel_scale > 0):
            raise ValueError(f"pixel_scale must be finite and > 0, got {self.pixel_scale}")
        if not self.smooth_l1_beta > 0:
            raise ValueError(f"smooth_l1_beta must be > 0, got {self.smooth_l1_beta}")
        if self.sprite_assign_fade_steps < 0:
            raise ValueError(f"sprite_assign_fade_steps must be >= 0, got {self.sprite_assign_fade_steps}")

    def at_step(self, step: int) -> LossConfig:
        """The weights in force at optimiser step ``step`` (only the assignment has a schedule)."""
        if self.sprite_assign_fade_steps == 0:
            return self
        left = max(0.0, 1.0 - step / self.sprite_assign_fade_steps)
        return replace(self, sprite_assign=self.sprite_assign * left, sprite_assign_fade_steps=0)

    def teacher_weight(self, teacher: str) -> float:
        return float(self.teacher_weights.get(teacher, 1.0))


@dataclass
class LossBreakdown:
    """``total`` carries the graph; ``terms`` are detached values for logging and checks.

    Term names: ``<teacher>/patch_cos``, ``<teacher>/patch_l1``, ``<teacher>/cls_cos`` (raw, unweighted),
    ``<teacher>/total`` (weighted contribution), ``pixels/mse``, ``pixels/total``, ``quantizer/commit``,
    ``quantizer/total``, ``sprites/search_mse_change`` (a change of pixel error: negative when the keypoint
    sprites would help where the keypoints look), ``sprites/assignment`` (a cross-entropy, nats) and
    ``sprites/total`` (both, weighted).
    """

    total: torch.Tensor
    terms: dict[str, torch.Tensor]

    def nonfinite(self) -> list[str]:
        """Names of the per-teacher (and pixel) totals that are NaN or infinite: who broke the loss."""
        return [
            name
            for name, value in self.terms.items()
            if name.endswith("/total") and not bool(torch.isfinite(value).all())
        ]


def distillation_loss(
    output: StudentOutput,
    targets: Mapping[str, TeacherOutput],
    images: torch.Tensor | None,
    cfg: LossConfig,
    patch_loss: PatchTerms = patch_terms,
) -> LossBreakdown:
    """The weighted sum of every teacher's feature losses and the pixel loss, with each term reported.

    ``targets`` are stats-normalised teacher features; ``images`` are the batch the student saw
    (needed for the pixel loss, when the student has a pixel head). ``patch_loss`` computes each
    teacher's two patch terms: ``patch_terms``, or the same compiled (``training.compile``), where
    the compiler fuses its passes over the grids.
    """
    unknown_targets = sorted(set(targets) - set(output.features))
    if unknown_targets:
        raise ValueError(
            f"targets for {unknown_targets}, which the student does not predict (it predicts {sorted(output.features)})"
        )
    unknown_weights = sorted(set(cfg.teacher_weights) - set(output.features))
    if unknown_weights:
        raise ValueError(
            f"teacher_weights names {unknown_weights}, which the student does not predict (it predicts {sorted(output.features)})"
        )
    missing = sorted(set(output.features) - set(targets))
    if missing:
        raise ValueError(f"no targets for teacher(s) {missing} that the student predicts")

    terms: dict[str, torch.Tensor] = {}
    totals: list[torch.Tensor] = []
    for name, pred in output.features.items():
        weight = cfg.teacher_weight(name)
        with torch.set_grad_enabled(torch.is_grad_enabled() and weight > 0):
            raw = _teacher_terms(name, pred, targets[name], cfg.smooth_l1_beta, patch_loss)
        term_weights = {"patch_cos": cfg.patch_cos, "patch_l1": cfg.patch_l1, "cls_cos": cfg.cls_cos}
        total = _weighted_sum(raw, term_weights, scale=weight)
        terms |= {f"{name}/{key}": value.detach() for key, value in raw.items()}
        terms[f"{name}/total"] = _report(total, pred.patch)
        if total is not None:
            totals.append(total)

    if output.pixels is not None and (images is not None or cfg.pixel_mse > 0):
        if images is None:
            raise ValueError(
                "the student predicts pixels, so distillation_loss needs the images it saw (images=None given)"
            )
        with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.pixel_mse > 0):
            mse = pixel_mse(output.pixels, images)
        total = _weighted_sum({"mse": mse}, {"mse": cfg.pixel_mse}, scale=1.0 / cfg.pixel_scale)
        terms["pixels/mse"], terms["pixels/total"] = mse.detach(), _report(total, output.pixels)
        if total is not None:
            totals.append(total)
        if output.sprite_search is not None:
            change = output.sprite_search.change.float()
            assignment = output.sprite_search.assignment.float()
            total = _weighted_sum(  # the change in MSE units like the pixel term, the assignment in nats
                {"change": change / cfg.pixel_scale, "assignment": assignment},
                {"change": cfg.sprite_search, "assignment": cfg.sprite_assign},
                scale=cfg.pixel_mse,
            )
            terms["sprites/search_mse_change"], terms["sprites/assignment"] = (
                change.detach(),
                assignment.detach(),
            )
            terms["sprites/total"] = _report(total, change)
            if total is not None:
                totals.append(total)

    if output.commit is not None:
        commit = output.commit.float()
        total = _weighted_sum({"commit": commit}, {"commit": cfg.commit}, scale=1.0)
        terms["quantizer/commit"], terms["quantizer/total"] = commit.detach(), _report(total, commit)
        if total is not None:
            totals.append(total)

    if not totals:
        raise ValueError("every loss term has weight 0 or no target: there is nothing to train")
    return LossBreakdown(total=torch.stack(totals).sum(), terms=terms)


def _teacher_terms(
    name: str, pred: TeacherOutput, target: TeacherOutput, beta: float, patch_loss: PatchTerms
) -> dict[str, torch.Tensor]:
    """Raw (unweighted) losses of one teacher, after checking the shapes agree."""
    if pred.patch.shape != target.patch.shape:
        raise ValueError(
            f"teacher {name!r}: predicted patch features {tuple(pred.patch.shape)} but targets are {tuple(target.patch.shape)}"
        )
    if (pred.cls is None) != (target.cls is None):
        has = (
            "predicts a CLS but the targets have none"
            if target.cls is None
            else "has CLS targets but the student predicts no CLS"
        )
        raise ValueError(
            f"teacher {name!r}: the student {has}; student and data were built for different teacher specs"
        )
    patch_cos, patch_l1 = patch_loss(pred.patch, target.patch.to(pred.patch.device, non_blocking=True), beta)
    terms = {"patch_cos": patch_cos, "patch_l1": patch_l1}
    if pred.cls is not None and target.cls is not None:
        terms["cls_cos"] = cosine_distance(pred.cls, target.cls.to(pred.cls.device, non_blocking=True))
    return terms


def _weighted_sum(
    raw: dict[str, torch.Tensor], weights: Mapping[str, float], scale: float
) -> torch.Tensor | None:
    """``scale * sum(weights[k] * raw[k])`` over the terms with a positive weight; None when nothing is kept."""
    kept = [weights[key] * value for key, value in raw.items() if weights[key] > 0]
    if not kept or scale == 0:
        return None
    return scale * torch.stack(kept).sum()


def _report(total: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """A total for the log: its detached value, or 0 when it was left out of the loss."""
    return total.detach() if total is not None else torch.zeros((), device=like.device)
