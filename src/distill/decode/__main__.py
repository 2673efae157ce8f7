"""``python -m distill.decode``: see :mod:`distill.decode.cli`."""

from distill.decode.cli import main

raise SystemExit(main())
