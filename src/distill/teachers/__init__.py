"""Frozen vision foundation models that produce distillation targets.

The families (clip, dinov2, mae, sam, depth_anything) register themselves when first needed: the
registry imports them on its first lookup, so importing this package does not
pull in open_clip, segment-anything and transformers' model code.
"""

from distill.teachers.base import Teacher
from distill.teachers.registry import TeacherEntry, get_entry, load_teacher, register_teacher, teacher_names

__all__ = [
    "Teacher",
    "TeacherEntry",
    "get_entry",
    "load_teacher",
    "register_teacher",
    "teacher_names",
]
