"""What a student's z carries on held-out frames, beside the mean image and PCA of the same width.

A thin wrapper over `distill.evaluate` (same as `python -m distill.evaluate` and `distill-evaluate`); see --help.
"""

from distill.evaluate.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
