"""Train a student: ``torchrun --nproc_per_node=N scripts/train_rvfm.py dataset.root=... teachers=cdm``.

A thin wrapper over ``distill.train.main`` (see docs/training.md, or run with --help).
"""

from distill.train import main

if __name__ == "__main__":
    main()
