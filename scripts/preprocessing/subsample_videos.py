"""Videos -> frame shards (every Nth frame or N frames per second).

A thin wrapper over `distill.data.subsample_videos` (same as `python -m distill.data.subsample_videos`); see --help.
"""

from distill.data.subsample_videos import main

if __name__ == "__main__":
    raise SystemExit(main())
