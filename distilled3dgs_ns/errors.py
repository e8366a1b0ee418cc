"""Errors that are the user's to fix, and the hook that prints them as one message instead of a traceback.

``ns-train``, ``ns-eval``, ``ns-export`` and ``ns-viewer`` are nerfstudio's scripts, so a bad teacher or a diverged
checkpoint raised inside them would end in a long traceback. Importing the plugin (nerfstudio does, to build its
method table) installs ``print_user_errors``: our ``UserError``s print as ``<program>: <message>``, and so does a
checkpoint that torch cannot read inside nerfstudio's own loader (a save cut short); every other exception keeps its
traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

USAGE_EXIT = 2
"""Exit status of every distilled3dgs command for a user error (as for a bad option on the command line)."""
TEACHER_CHECK_OPTION = "--pipeline.teacher-min-psnr"
"""The student's option for the teacher check (``StudentPipelineConfig.teacher_min_psnr``): the check's error names
it, and distilled3dgs-run recognises that error by it."""


class UserError(RuntimeError):
    """A problem with the user's input or run; the message says what was wrong and what to do."""


def error_line(program: str, message: str) -> str:
    """How every user error prints: ``<program>: <message>`` (``distilled3dgs-run`` finds ns-train's in its log)."""
    return f"{program}: {message}"


@contextmanager
def one_line_errors(program: str, also: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """The error handling of every ``distilled3dgs-*`` command: a ``UserError`` (or one of ``also``) ends the program
    with ``<program>: <message>`` and exit status 2."""
    try:
        yield
    except (UserError, *also) as error:
        print(error_line(program, str(error)), file=sys.stderr)
        sys.exit(USAGE_EXIT)


NERFSTUDIO_LOADERS = ("eval_load_checkpoint", "_load_checkpoint")
"""The nerfstudio 1.1.5 functions that read checkpoints: ``nerfstudio.utils.eval_utils``'s (ns-eval, ns-export,
ns-viewer) and ``Trainer``'s (ns-train --load-dir)."""


def unreadable_checkpoint(path: Path | str, error: BaseException) -> str:
    """The message for a checkpoint ``torch.load`` could not read."""
    return (
        f"{path} is not a readable checkpoint ({type(error).__name__}: {str(error)[:120]}); it is truncated or "
        "not a nerfstudio checkpoint: delete it to fall back on the previous one, or retrain"
    )


def _nerfstudio_checkpoint_error(error: BaseException, trace: TracebackType | None) -> str | None:
    """The message when ``error`` came out of ``torch.load`` called by nerfstudio's loader, else None."""
    while trace is not None and trace.tb_next is not None:
        frame, inner = trace.tb_frame, trace.tb_next.tb_frame
        if frame.f_code.co_name in NERFSTUDIO_LOADERS and "torch" in Path(inner.f_code.co_filename).parts:
            return unreadable_checkpoint(frame.f_locals.get("load_path", "the checkpoint"), error)
        trace = trace.tb_next
    return None


def print_user_errors(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
    """``sys.excepthook``: a ``UserError`` (or an unreadable checkpoint under nerfstudio's loader) is its message
    alone (exit code 1 as before); the rest as Python does."""
    message = str(error) if isinstance(error, UserError) else _nerfstudio_checkpoint_error(error, trace)
    if message is not None:
        print(error_line(Path(sys.argv[0]).name, message), file=sys.stderr)
        return
    sys.__excepthook__(kind, error, trace)


def install_excepthook() -> None:
    """Make uncaught ``UserError``s one message (only where no other tool replaced Python's hook)."""
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = print_user_errors
