"""Image folder -> image shards, manifest.json and rejected.txt.

A thin wrapper over `distill.data.organize` (same as `python -m distill.data.organize`); see --help.
"""

from distill.data.organize import main

if __name__ == "__main__":
    raise SystemExit(main())
