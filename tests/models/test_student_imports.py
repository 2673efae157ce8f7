"""The library stays apart from the trainer: distill.models and distill.losses never import distill.train."""

from __future__ import annotations

import subprocess
import sys


def test_models_and_losses_do_not_import_the_trainer() -> None:
    code = (
        "import sys, distill.models, distill.losses; "
        "leaked = sorted(m for m in sys.modules if m == 'distill.train' or m.startswith('distill.train.')); "
        "print(leaked); sys.exit(1 if leaked else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
