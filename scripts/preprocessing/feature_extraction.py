"""Teacher features for every image shard (single process or under torchrun).

A thin wrapper over `distill.preprocess.extract` (same as `python -m distill.preprocess.extract`); see --help.
"""

from distill.preprocess.extract import main

if __name__ == "__main__":
    raise SystemExit(main())
