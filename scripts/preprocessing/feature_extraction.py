"""Teacher features for every image shard (single process or under torchrun).

A thin wrapper over `distill.data.extract` (same as `python -m distill.data.extract`); see --help.
"""

from distill.data.extract import main

if __name__ == "__main__":
    raise SystemExit(main())
