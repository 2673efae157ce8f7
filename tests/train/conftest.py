"""Session fixtures of the trainer tests (definitions in train_helpers.py)."""

from train_helpers import reference_run, tiny_data

__all__ = ["reference_run", "tiny_data"]
