"""How every command reports bad input: one ``error: ...`` line on stderr and exit status 2, no traceback.

The library raises ``FileNotFoundError``, ``ValueError`` (``UnreadableFileError`` for damaged files
among them) or ``KeyError`` with a message that names the file and the fix; a traceback around it
only hides that line from the user.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

USER_ERRORS = (FileNotFoundError, ValueError, KeyError)


def exit_code_of(command: Callable[[], int]) -> int:
    """Run ``command``; a user error becomes its one-line message and status 2."""
    try:
        return command()
    except USER_ERRORS as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return 2
