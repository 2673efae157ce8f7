"""Packaged Hydra configs of the trainer (``pkg://distill.configs``); see docs/training.md."""
