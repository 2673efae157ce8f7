"""Validate a dataset folder; exit status 1 naming the first bad shard and key.

A thin wrapper over `distill.data.check` (same as `python -m distill.data.check`); see --help.
"""

from distill.data.check import main

if __name__ == "__main__":
    raise SystemExit(main())
