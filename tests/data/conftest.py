"""Fixtures of the data pipeline tests (definitions in data_helpers.py)."""

from data_helpers import built, dataset_copy, tiny_teachers

__all__ = ["built", "dataset_copy", "tiny_teachers"]
