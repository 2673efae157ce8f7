"""Write a teacher as local weights: a folder that ``load_teacher(name, "hub", weights=folder)`` loads back.

An aligned teacher (LoRA merged into a copy of DINOv2, say) must be usable wherever a teacher is: extraction,
online targets, decoding. So it is saved the way those already read local weights: transformers'
``save_pretrained`` folder (``config.json``, ``model.safetensors``) plus a ``preprocessor_config.json``
holding the spec's input size, mean and std. The files are checked where they are written (the caller's
staging folder): the family's own loader reads them back strictly and must give the same spec, so a
family whose geometry the folder cannot express fails here, naming it, instead of at the next extraction.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import PreTrainedModel

from distill.io import atomic_write_text
from distill.teachers.base import Teacher
from distill.teachers.registry import get_entry

PREPROCESSOR_NAME = "preprocessor_config.json"


def preprocessor_record(teacher: Teacher) -> dict[str, object]:
    """The image processor config that gives the teacher's spec: square crop at its input size, its mean/std."""
    side = teacher.spec.input_size
    return {
        "do_center_crop": True,
        "crop_size": {"height": side, "width": side},
        "image_mean": list(teacher.spec.mean),
        "image_std": list(teacher.spec.std),
    }


def write_teacher(teacher: Teacher, folder: Path) -> None:
    """Write the weights folder's files into ``folder``, verified to load strictly back to the same spec."""
    name = teacher.spec.name
    model = getattr(teacher, "model", None)
    if not isinstance(model, PreTrainedModel):
        raise TypeError(
            f"teacher {name!r} is not a transformers model, so it has no local-weights folder format; "
            "the transformers families (dinov2, dinov3, siglip2, mae, depth_anything, vjepa2, sam_hf) have one"
        )
    model.save_pretrained(folder, safe_serialization=True)
    record = json.dumps(preprocessor_record(teacher), indent=2, sort_keys=True) + "\n"
    atomic_write_text(folder / PREPROCESSOR_NAME, record)
    loaded = get_entry(name).load_weights(str(folder)).spec
    if loaded != teacher.spec:
        raise ValueError(
            f"teacher {name!r}: its saved folder would load as {loaded}, not {teacher.spec}; "
            "this family's loader cannot express the teacher's geometry from a local folder"
        )
