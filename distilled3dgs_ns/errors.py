"""Errors that are the user's to fix, and the hook that prints them as one message instead of a traceback.

``ns-train``, ``ns-eval``, ``ns-export`` and ``ns-viewer`` are nerfstudio's scripts, so a bad teacher or a diverged
checkpoint raised inside them would end in a long traceback. Importing the plugin (nerfstudio does, to build its
method table) installs ``print_user_errors``: our ``UserError``s print as ``<program>: <message>``; every other
exception keeps its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import TracebackType

USAGE_EXIT = 2
"""Exit status of every distilled3dgs command for a user error (as for a bad option on the command line)."""


class UserError(RuntimeError):
    """A problem with the user's input or run; the message says what was wrong and what to do."""


def print_user_errors(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
    """``sys.excepthook``: a ``UserError`` is its message alone (exit code 1 as before); the rest as Python does."""
    if isinstance(error, UserError):
        print(f"{Path(sys.argv[0]).name}: {error}", file=sys.stderr)
        return
    sys.__excepthook__(kind, error, trace)


def install_excepthook() -> None:
    """Make uncaught ``UserError``s one message (only where no other tool replaced Python's hook)."""
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = print_user_errors
