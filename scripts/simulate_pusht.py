"""Render PushT episodes as MP4 videos with per-frame state/action/heading sidecars (the `[sim]` extra).

A thin wrapper over `distill.simulate` (same as `python -m distill.simulate` and `distill-simulate`); see --help.
"""

from distill.simulate.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
