"""Per-channel feature statistics -> feature_stats/<teacher>.safetensors.

A thin wrapper over `distill.preprocess.calc_stats` (same as `python -m distill.preprocess.calc_stats`); see --help.
"""

from distill.preprocess.calc_stats import main

if __name__ == "__main__":
    raise SystemExit(main())
