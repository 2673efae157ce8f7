"""``python -m distill.train <hydra overrides>``: the same as scripts/train_rvfm.py."""

from distill.train.cli import main

main()
