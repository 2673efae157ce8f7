"""The teacher registry: a name -> how to build it tiny (offline) or from a hub id / local path."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from distill.teachers.base import Teacher

Source = Literal["tiny", "hub"]
DecoderKind = Literal["pca", "masks", "depth", "pixels"]


@dataclass(frozen=True)
class TeacherEntry:
    """How to build one teacher family, and which decoder turns its features into something visible."""

    name: str
    default_weights: str  # hub model id / open_clip tag / checkpoint name used when no path is given
    build_tiny: Callable[[], Teacher]  # deterministic random-init miniature of the same architecture class
    load_weights: Callable[[str], Teacher]  # hub model id, local directory or checkpoint file
    decoder: DecoderKind | None  # what decode/ does with this teacher's features


_REGISTRY: dict[str, TeacherEntry] = {}
FAMILY_MODULES = (
    "clip",
    "dinov2",
    "dinov3",
    "siglip2",
    "mae",
    "sam",
    "sam_hf",
    "sam2",
    "depth_anything",
    "vjepa2",
)  # each registers its entries on import


def _load_families() -> None:
    """Import every family module once (Python caches them), so lookups see the whole registry."""
    for module in FAMILY_MODULES:
        importlib.import_module(f"distill.teachers.{module}")


def register_teacher(entry: TeacherEntry) -> TeacherEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"teacher {entry.name!r} is registered twice")
    _REGISTRY[entry.name] = entry
    return entry


def teacher_names() -> list[str]:
    _load_families()
    return sorted(_REGISTRY)


def get_entry(name: str) -> TeacherEntry:
    _load_families()
    if name not in _REGISTRY:
        raise KeyError(f"unknown teacher {name!r}; registered teachers: {', '.join(teacher_names())}")
    return _REGISTRY[name]


def load_teacher(
    name: str,
    source: Source = "tiny",
    weights: str | None = None,
    device: torch.device | str | None = None,
) -> Teacher:
    """Build a frozen teacher in eval mode.

    ``source="tiny"`` builds the offline miniature (``weights`` must be None); ``source="hub"`` loads
    ``weights`` (a hub id, a local directory or a checkpoint file), or the entry's default id.
    ``device`` defaults to CUDA when present.
    """
    entry = get_entry(name)
    if source == "tiny":
        if weights is not None:
            raise ValueError(
                f"teacher {name!r}: source='tiny' builds random weights; drop weights={weights!r} or use source='hub'"
            )
        teacher = entry.build_tiny()
    elif source == "hub":
        teacher = entry.load_weights(weights or entry.default_weights)
    else:
        raise ValueError(f"teacher {name!r}: unknown source {source!r}; use 'tiny' or 'hub'")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return teacher.to(device).freeze()
