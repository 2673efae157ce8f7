"""Encode a frames dataset into a latent dataset (single process or under torchrun).

A thin wrapper over `distill.encode` (same as `python -m distill.encode` and `distill-encode`); see --help.
"""

from distill.encode.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
