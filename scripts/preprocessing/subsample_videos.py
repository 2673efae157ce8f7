"""Videos -> frame shards (every Nth frame or N frames per second).

A thin wrapper over `distill.preprocess.subsample_videos` (same as `python -m distill.preprocess.subsample_videos`); see --help.
"""

from distill.preprocess.subsample_videos import main

if __name__ == "__main__":
    raise SystemExit(main())
