"""The decoding entry points: z (no images needed), images, and the teachers' side for comparison."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch

from distill.decode.decoders import (
    Target,
    available_targets,
    check_targets,
    decodable,
    decoder_kind,
    parse_targets,
)
from distill.decode.frames import DecodedFrames, FrameDecoder
from distill.decode.masks import MaskSettings, Prompts
from distill.decode.pca import PcaBasis
from distill.geometry import check_image_batch
from distill.models.student import Student
from distill.teachers import Teacher


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run in eval mode and restore the caller's mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def resolve_targets(
    model: Student, targets: str | Iterable[str] | None, teachers: Mapping[str, Teacher]
) -> tuple[Target, ...]:
    """None -> every target this checkpoint and these decoder teachers can produce; else check them."""
    predicted = list(model.config.teachers)
    pixel_head = model.pixel_head is not None
    parsed = parse_targets(targets)
    if parsed is None:
        return available_targets(predicted, pixel_head, teachers)
    check_targets(parsed, predicted, pixel_head, teachers)
    return parsed


def decode_z(
    model: Student,
    z: torch.Tensor,
    targets: str | Iterable[str] | None = None,
    teachers: Mapping[str, Teacher] | None = None,
    *,
    mask_settings: MaskSettings | None = None,
    prompts: Prompts | None = None,
    pca_bases: Mapping[str, PcaBasis] | None = None,
    reference_images: torch.Tensor | None = None,
    batch_size: int = 16,
) -> DecodedFrames:
    """z [T, d_z] (encoded frames or a world-model rollout; or a quantised student's integer codes
    [T, codes]) -> decoded frames, no images needed.

    Features are predicted from z alone (``model.predict(z, denormalize=True)``) and decoded with
    the teachers' decoders; one PCA basis is fitted over all T frames unless ``pca_bases`` is given.
    ``targets=None`` decodes everything available; a named target that cannot be decoded is an error.
    ``reference_images`` [T, 3, S, S] are needed only by an MAE teacher trained with norm_pix_loss
    (its pixels then take each patch's mean/variance from these images).
    """
    if not z.is_floating_point():
        z = model.codes_to_z(z)
    if z.ndim != 2 or z.shape[1] != model.config.d_z or z.shape[0] == 0:
        raise ValueError(f"z must be [T, {model.config.d_z}] with T >= 1, got {tuple(z.shape)}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if reference_images is not None and reference_images.shape[0] != z.shape[0]:
        raise ValueError(f"{reference_images.shape[0]} reference images for {z.shape[0]} z vectors")
    teachers = dict(teachers or {})
    chosen = resolve_targets(model, targets, teachers)
    decoder = FrameDecoder(
        chosen,
        model.config.image_size,
        teachers,
        mask_settings=mask_settings,
        prompts=prompts,
        pca_bases=pca_bases,
    )
    names = decodable(model.config.teachers, chosen, teachers)
    with _eval_mode(model), torch.inference_mode():
        for start in range(0, z.shape[0], batch_size):
            out = model.predict(z[start : start + batch_size], denormalize=True)
            images = None if reference_images is None else reference_images[start : start + batch_size]
            decoder.add({name: out.features[name] for name in names}, out.pixels, images)
    return decoder.finish()


def decode_teacher_frames(
    teachers: Mapping[str, Teacher],
    images: torch.Tensor,
    targets: Iterable[Target],
    *,
    mask_settings: MaskSettings | None = None,
    prompts: Prompts | None = None,
    pca_bases: Mapping[str, PcaBasis] | None = None,
    batch_size: int = 16,
) -> DecodedFrames:
    """The teachers' own features for canonical-view ``images`` [T, 3, S, S], decoded like the student's.

    Without ``pca_bases`` a basis is fitted over all frames' teacher features (``decode_images`` then
    draws the student row in that basis).
    """
    check_image_batch(images, "images to decode")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    targets = tuple(targets)
    used = {name: t for name, t in teachers.items() if decoder_kind(name) in targets}
    decoder = FrameDecoder(
        targets, images.shape[-1], used, mask_settings=mask_settings, prompts=prompts, pca_bases=pca_bases
    )
    for chunk in images.split(batch_size):
        decoder.add({name: teacher(chunk) for name, teacher in used.items()}, images=chunk)
    return decoder.finish()


def decode_images(
    model: Student,
    images: torch.Tensor,
    targets: str | Iterable[str] | None = None,
    teachers: Mapping[str, Teacher] | None = None,
    *,
    compare: bool = False,
    teacher_images: torch.Tensor | None = None,
    mask_settings: MaskSettings | None = None,
    prompts: Prompts | None = None,
    batch_size: int = 16,
) -> tuple[DecodedFrames, DecodedFrames | None]:
    """Canonical-view frames [T, 3, S, S] -> (student's decoding, teachers' decoding or None).

    The frames are one clip: one PCA basis is fitted over all of them (stable video colours). With
    ``compare`` the basis is fitted on the teacher's features (the ground truth) and the student row is
    drawn in it, so a colour means the same feature direction in both rows. ``teacher_images`` (the
    target side of paired images, same shape) are what the teachers see instead of ``images``.
    """
    check_image_batch(images, "images to decode")
    if teacher_images is not None and teacher_images.shape != images.shape:
        raise ValueError(
            f"teacher images are {tuple(teacher_images.shape)}, the images {tuple(images.shape)}"
        )
    size = model.config.image_size
    if tuple(images.shape[-2:]) != (size, size):
        raise ValueError(
            f"images are {tuple(images.shape[-2:])}, the checkpoint's canonical view is {size}x{size}; "
            "pass them through distill.geometry.canonical_view first"
        )
    teachers = dict(teachers or {})
    chosen = resolve_targets(model, targets, teachers)
    teacher: DecodedFrames | None = None
    if compare:
        missing = [n for n in model.config.teachers if decoder_kind(n) in chosen and n not in teachers]
        if missing:
            raise ValueError(
                f"compare mode needs the teachers {missing} themselves; include them in teachers="
            )
        teacher = decode_teacher_frames(
            teachers,
            images if teacher_images is None else teacher_images,
            chosen,
            mask_settings=mask_settings,
            prompts=prompts,
            batch_size=batch_size,
        )
    with _eval_mode(model):
        z = model.encode_video(images, batch_size=batch_size)
    student = decode_z(
        model,
        z,
        chosen,
        teachers,
        mask_settings=mask_settings,
        prompts=prompts,
        pca_bases=None if teacher is None else teacher.pca_bases,
        reference_images=images,
        batch_size=batch_size,
    )
    return student, teacher
