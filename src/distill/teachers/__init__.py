"""Frozen vision foundation models that produce distillation targets."""

from distill.teachers import clip, depth_anything, dinov2, mae, sam  # noqa: F401  (registers the families)
from distill.teachers.base import Teacher, TeacherOutput, TeacherSpec
from distill.teachers.registry import TeacherEntry, get_entry, load_teacher, register_teacher, teacher_names

__all__ = [
    "Teacher",
    "TeacherEntry",
    "TeacherOutput",
    "TeacherSpec",
    "get_entry",
    "load_teacher",
    "register_teacher",
    "teacher_names",
]
