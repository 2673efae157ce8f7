"""Validate a dataset folder; exit status 1 naming the first bad shard and key.

A thin wrapper over `distill.preprocess.check` (same as `python -m distill.preprocess.check`); see --help.
"""

from distill.preprocess.check import main

if __name__ == "__main__":
    raise SystemExit(main())
