"""Which teacher decodes what, and building those teachers so they match a student checkpoint.

A teacher's decoder kind comes from its registry entry (``dinov2`` -> pca, ``sam`` -> masks,
``depth_anything`` -> depth, ``mae`` -> pixels). The decoders themselves are the teachers' own
modules (SAM's prompt encoder and mask decoder, Depth-Anything's neck and head, MAE's pixel
decoder), so decoding a checkpoint needs the very teachers it was trained against: each built
teacher's spec is checked against the spec saved in the checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Literal, Protocol, runtime_checkable

import torch

from distill.features import TeacherOutput, TeacherSpec
from distill.teachers import Teacher, get_entry, load_teacher
from distill.teachers.registry import DecoderKind, Source

Target = Literal["pca", "masks", "depth", "pixels"]
TARGETS: tuple[Target, ...] = ("pca", "masks", "depth", "pixels")
NEEDS_MODULE: frozenset[DecoderKind] = frozenset({"masks", "depth", "pixels"})  # pca needs only features


@runtime_checkable
class DepthDecoding(Protocol):
    """Depth-Anything's neck + head on its own feature maps (``DepthAnythingTeacher``)."""

    def depth_from_features(self, features: TeacherOutput, image_size: int | None = ...) -> torch.Tensor: ...


@runtime_checkable
class PixelDecoding(Protocol):
    """ViT-MAE's pixel decoder on its encoder tokens (``MaeTeacher``)."""

    @property
    def needs_reference_images(self) -> bool: ...

    def reconstruct(
        self, features: TeacherOutput, reference_images: torch.Tensor | None = ...
    ) -> torch.Tensor: ...


def decoder_kind(teacher: str) -> DecoderKind | None:
    """The registry's decoder kind for a teacher name (None: its features are not decoded)."""
    try:
        return get_entry(teacher).decoder
    except KeyError as error:
        raise KeyError(
            f"the checkpoint predicts teacher {teacher!r}, which is not registered in this install "
            f"({error.args[0]}); use the distill version the checkpoint was trained with"
        ) from error


def parse_targets(text: str | Iterable[str] | None) -> tuple[Target, ...] | None:
    """``"pca,depth"`` (or a list) -> validated targets in canonical order; None stays None (= all)."""
    if text is None:
        return None
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    unknown = sorted(set(items) - set(TARGETS))
    if unknown or not items:
        raise ValueError(f"unknown decode targets {unknown or items}; choose from {', '.join(TARGETS)}")
    return tuple(t for t in TARGETS if t in items)


def teachers_for(predicted: Iterable[str], targets: Iterable[Target], compare: bool) -> list[str]:
    """Teachers to build: those whose decoder module a target needs, plus (to compare) every decoded one."""
    wanted = set(targets)
    names = []
    for name in predicted:
        kind = decoder_kind(name)
        if kind in wanted and (compare or kind in NEEDS_MODULE):
            names.append(name)
    return names


def available_targets(
    predicted: Iterable[str], pixel_head: bool, teachers: Mapping[str, Teacher]
) -> tuple[Target, ...]:
    """Targets that can be decoded from these predicted teachers with these decoder teachers."""
    kinds: set[str] = {"pixels"} if pixel_head else set()
    for name in predicted:
        kind = decoder_kind(name)
        if kind is not None and (kind not in NEEDS_MODULE or name in teachers):
            kinds.add(kind)
    return tuple(t for t in TARGETS if t in kinds)


def check_targets(
    targets: Iterable[Target], predicted: Iterable[str], pixel_head: bool, teachers: Mapping[str, Teacher]
) -> None:
    """Every requested target has a source, and every teacher feeding it has its decoder module."""
    predicted = list(predicted)
    for target in targets:
        if target not in TARGETS:
            raise ValueError(f"unknown decode target {target!r}; choose from {', '.join(TARGETS)}")
        sources = [name for name in predicted if decoder_kind(name) == target]
        if not sources and not (target == "pixels" and pixel_head):
            raise ValueError(
                f"cannot decode {target!r}: the checkpoint predicts no teacher that decodes to it "
                f"(it predicts {sorted(predicted)}); drop it from the targets"
            )
        missing = [name for name in sources if target in NEEDS_MODULE and name not in teachers]
        if missing:
            raise ValueError(
                f"decoding {target!r} needs the decoder of teacher(s) {missing}: pass "
                "teachers=load_decoder_teachers(model.config.teachers, names, source=...)"
            )


def decodable(
    predicted: Iterable[str], targets: Iterable[Target], teachers: Mapping[str, Teacher]
) -> list[str]:
    """The predicted teachers whose features feed one of ``targets`` with the decoders at hand."""
    wanted = set(targets)
    return [
        name
        for name in predicted
        if decoder_kind(name) in wanted and (decoder_kind(name) not in NEEDS_MODULE or name in teachers)
    ]


def spec_differences(expected: TeacherSpec, built: TeacherSpec) -> list[str]:
    """Field-by-field differences between two specs (mean/std compared to 1e-6)."""
    problems = []
    for field in ("name", "input_size", "grid", "channels", "cls_channels"):
        a, b = getattr(expected, field), getattr(built, field)
        if a != b:
            problems.append(f"{field} {a} vs {b}")
    for field in ("mean", "std"):
        a, b = getattr(expected, field), getattr(built, field)
        if not all(math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9) for x, y in zip(a, b, strict=True)):
            problems.append(f"{field} {a} vs {b}")
    return problems


def _check_built(name: str, expected: TeacherSpec, teacher: Teacher, source: str, checkpoint: str) -> None:
    problems = spec_differences(expected, teacher.spec)
    if problems:
        hint = (
            "it was not trained against the tiny teachers: pass --teachers-source hub with the weights it was trained with"
            if source == "tiny"
            else "pass the weights it was trained with (--teacher-weights NAME=ID_OR_PATH)"
        )
        raise ValueError(
            f"{checkpoint} was trained against a {name!r} teacher that differs from the one built from "
            f"source {source!r} (checkpoint vs built: {'; '.join(problems)}); {hint}"
        )


def load_decoder_teachers(
    specs: Mapping[str, TeacherSpec],
    names: Iterable[str],
    source: Source | Literal["auto"] = "auto",
    weights: Mapping[str, str] | None = None,
    device: torch.device | str | None = None,
    checkpoint: str = "the checkpoint",
) -> dict[str, Teacher]:
    """Build each named teacher with :func:`load_teacher` and check it against the checkpoint's spec.

    ``weights`` maps a teacher name to its hub id, directory or file (``source="hub"`` only).
    ``source="auto"`` uses the tiny teachers when every one matches its checkpoint spec (a
    checkpoint trained on them) and the hub teachers otherwise.
    """
    names = list(names)
    weights = dict(weights or {})
    unused = sorted(set(weights) - set(specs))
    if unused:
        raise ValueError(
            f"teacher weights given for {unused}, which {checkpoint} does not predict ({sorted(specs)})"
        )
    for name in names:
        if name not in specs:
            raise KeyError(f"{checkpoint} does not predict teacher {name!r} (it predicts {sorted(specs)})")
    if source == "auto":
        if not weights:
            tiny = {name: load_teacher(name, source="tiny", device=device) for name in names}
            if all(not spec_differences(specs[name], teacher.spec) for name, teacher in tiny.items()):
                return dict(tiny)
        source = "hub"
    if source == "tiny" and weights:
        raise ValueError(
            f"teacher weights {sorted(weights)} were given with source 'tiny'; use --teachers-source hub"
        )
    teachers: dict[str, Teacher] = {}
    for name in names:
        teacher = load_teacher(name, source=source, weights=weights.get(name), device=device)
        _check_built(name, specs[name], teacher, source, checkpoint)
        teachers[name] = teacher
    return teachers
