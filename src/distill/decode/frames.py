"""Features -> decoded frames: PCA maps, SAM masks, depth and pixels, for the student or a teacher.

One code path serves both rows of a grid: the student's predicted features (``model.predict(z,
denormalize=True)``, i.e. in each teacher's raw space) and the teachers' own features go through
the same :class:`FrameDecoder`. It takes features chunk by chunk (so a long video never holds all
of its SAM embeddings at once) and keeps only decoded results. The PCA basis needs every frame, so
the PCA teachers' features are kept until :meth:`FrameDecoder.finish` fits it, unless a basis is
given (in compare mode the student row reuses the teacher's).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from distill.decode.decoders import (
    DepthDecoding,
    PixelDecoding,
    Target,
    decoder_kind,
)
from distill.decode.masks import MaskDecoding, MaskSettings, Prompts, automatic_masks, prompted_masks
from distill.decode.pca import PcaBasis, fit_pca
from distill.features import TeacherOutput
from distill.teachers import Teacher

PIXEL_HEAD = "pixel_head"  # key of the student's own pixel head in DecodedFrames.pixels


@dataclass
class DecodedFrames:
    """Everything decoded for T frames of one source (student or teacher), keyed by teacher name.

    Resolutions are the decoders' own: PCA at the teacher's grid, masks at the canonical
    ``image_size``, depth at the depth teacher's input size, pixels at the pixel source's size.
    """

    frames: int
    image_size: int  # the canonical view size prompts and masks refer to
    pca: dict[str, torch.Tensor] = field(default_factory=dict)  # [T, h, w, 3] float in [0, 1]
    pca_bases: dict[str, PcaBasis] = field(default_factory=dict)
    masks: dict[str, list[list[dict[str, Any]]]] = field(default_factory=dict)  # segment-anything records
    prompt_masks: dict[str, torch.Tensor] = field(default_factory=dict)  # [T, K, S, S] bool
    prompt_scores: dict[str, torch.Tensor] = field(default_factory=dict)  # [T, K] predicted IoU
    depth: dict[str, torch.Tensor] = field(default_factory=dict)  # [T, S_d, S_d] float
    pixels: dict[str, torch.Tensor] = field(default_factory=dict)  # [T, 3, H, W] float in [0, 1]
    prompts: Prompts = field(default_factory=Prompts)


def _require(teachers: Mapping[str, Teacher], protocol: type, name: str, kind: str) -> Any:
    if name not in teachers:
        raise ValueError(
            f"decoding {kind!r} from {name!r} features needs the {name!r} teacher's decoder; pass it in teachers="
        )
    teacher = teachers[name]
    if not isinstance(teacher, protocol):
        raise TypeError(
            f"teacher {name!r} is registered to decode {kind!r} but {type(teacher).__name__} lacks that decoder"
        )
    return teacher


def _reconstruct(
    mae: PixelDecoding, name: str, out: TeacherOutput, images: torch.Tensor | None
) -> torch.Tensor:
    if not mae.needs_reference_images:
        return mae.reconstruct(out)
    if images is None:
        raise ValueError(
            f"teacher {name!r} was trained with norm_pix_loss: its decoder needs the input images for each "
            "patch's mean/variance; decode images (decode_images / reference_images=) or drop the MAE pixels"
        )
    return mae.reconstruct(out, reference_images=images)


class FrameDecoder:
    """Decode feature chunks in order; :meth:`finish` returns the :class:`DecodedFrames` of all of them."""

    def __init__(
        self,
        targets: Iterable[Target],
        image_size: int,
        teachers: Mapping[str, Teacher] | None = None,
        *,
        mask_settings: MaskSettings | None = None,
        prompts: Prompts | None = None,
        pca_bases: Mapping[str, PcaBasis] | None = None,
    ) -> None:
        self.targets = frozenset(targets)
        self.teachers = dict(teachers or {})
        self.mask_settings = mask_settings or MaskSettings()
        self.prompts = prompts or Prompts()
        self.prompts.check(image_size)
        self.out = DecodedFrames(frames=0, image_size=image_size, prompts=self.prompts)
        self.out.pca_bases = dict(pca_bases or {})
        self._pca_parts: dict[str, list[torch.Tensor]] = {}
        self._parts: dict[str, dict[str, list[torch.Tensor]]] = {}

    def _keep(self, group: str, key: str, value: torch.Tensor) -> None:
        self._parts.setdefault(group, {}).setdefault(key, []).append(value.detach().cpu())

    def add(
        self,
        features: Mapping[str, TeacherOutput],
        pixels: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
    ) -> None:
        """Decode one chunk: ``features`` in each teacher's raw space; ``pixels`` [B, 3, H, W] from a pixel head.

        ``images`` (the chunk's canonical views) are read only by MAE checkpoints trained with
        ``norm_pix_loss``, whose decoder output is un-standardised with each input patch's mean/variance.
        """
        sizes = {out.patch.shape[0] for out in features.values()} | (
            {pixels.shape[0]} if pixels is not None else set()
        )
        if not sizes:
            raise ValueError("an empty chunk: give features and/or pixels for at least one frame")
        if len(sizes) != 1:
            raise ValueError(
                f"a chunk's features and pixels disagree on the number of frames: {sorted(sizes)}"
            )
        for name, out in features.items():
            kind = decoder_kind(name)
            if kind is None or kind not in self.targets:
                continue
            if not torch.isfinite(out.patch).all():
                raise ValueError(f"{name!r} features contain NaN or inf; check the checkpoint and its stats")
            if kind == "pca":
                if name in self.out.pca_bases:
                    self._keep("pca", name, self.out.pca_bases[name].to_rgb(out.patch))
                else:
                    self._pca_parts.setdefault(name, []).append(out.patch.detach().cpu())
            elif kind == "masks":
                decoder: MaskDecoding = _require(self.teachers, MaskDecoding, name, kind)
                self.out.masks.setdefault(name, []).extend(
                    automatic_masks(decoder, out.patch, self.out.image_size, self.mask_settings)
                )
                if self.prompts:
                    masks, scores = prompted_masks(decoder, out.patch, self.prompts, self.out.image_size)
                    self._keep("prompt_masks", name, masks)
                    self._keep("prompt_scores", name, scores)
            elif kind == "depth":
                depth: DepthDecoding = _require(self.teachers, DepthDecoding, name, kind)
                self._keep("depth", name, depth.depth_from_features(out).float())
            elif kind == "pixels":
                mae: PixelDecoding = _require(self.teachers, PixelDecoding, name, kind)
                self._keep("pixels", name, _reconstruct(mae, name, out, images).float().clamp(0.0, 1.0))
        if pixels is not None and "pixels" in self.targets:
            self._keep("pixels", PIXEL_HEAD, pixels.float().clamp(0.0, 1.0))
        self.out.frames += sizes.pop()

    def finish(self) -> DecodedFrames:
        """Fit the PCA bases still missing (over every frame added) and assemble the result."""
        out = self.out
        for name, parts in self._pca_parts.items():
            patch = torch.cat(parts)
            out.pca_bases[name] = fit_pca(patch)
            out.pca[name] = out.pca_bases[name].to_rgb(patch)
        for group, by_name in self._parts.items():
            target: dict[str, torch.Tensor] = getattr(out, group)
            for name, parts in by_name.items():
                target[name] = torch.cat(parts)
        self._pca_parts, self._parts = {}, {}
        return out


def decode_features(
    features: Mapping[str, TeacherOutput],
    targets: Iterable[Target],
    image_size: int,
    teachers: Mapping[str, Teacher] | None = None,
    *,
    pixels: torch.Tensor | None = None,
    mask_settings: MaskSettings | None = None,
    prompts: Prompts | None = None,
    pca_bases: Mapping[str, PcaBasis] | None = None,
    images: torch.Tensor | None = None,
) -> DecodedFrames:
    """Decode one batch of raw-space features (and optional pixel-head pixels) in one go."""
    decoder = FrameDecoder(
        targets, image_size, teachers, mask_settings=mask_settings, prompts=prompts, pca_bases=pca_bases
    )
    decoder.add(features, pixels, images)
    return decoder.finish()
