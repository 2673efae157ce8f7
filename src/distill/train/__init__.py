"""The trainer: Hydra configs in, a student checkpoint out (``distill.train.main``)."""

from distill.train.cli import main

__all__ = ["main"]
