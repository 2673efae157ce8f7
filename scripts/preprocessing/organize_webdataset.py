"""Image folder -> image shards, manifest.json and rejected.txt.

A thin wrapper over `distill.preprocess.organize` (same as `python -m distill.preprocess.organize`); see --help.
"""

from distill.preprocess.organize import main

if __name__ == "__main__":
    raise SystemExit(main())
