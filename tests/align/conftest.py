"""Fixtures of the align tests (definitions in align_helpers.py)."""

from align_helpers import paired, train_align

__all__ = ["paired", "train_align"]
