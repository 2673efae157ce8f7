#!/usr/bin/env python
"""Decode a student checkpoint on an image, folder or video; same as ``python -m distill.decode``.

Example (offline, tiny teachers):
    python scripts/decoding/decoding_example.py --checkpoint runs/demo/run/student \
        --media runs/demo/media/clip.mp4 --compare-teachers --output runs/decoded
"""

from distill.decode.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
