"""One rich progress bar helper, so every long loop here reports the same way (or stays silent in tests)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

Advance = Callable[..., None]
"""``advance(steps=1, status="")``: move the bar on and show a short status (a loss, a distortion)."""


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Advance]:
    """A transient bar over ``total`` steps; with ``enabled=False`` a no-op, so callers need no branches."""
    if not enabled:
        yield lambda steps=1, status="": None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(description, total=total, status="")

        def advance(steps: int = 1, status: str = "") -> None:
            progress.update(task, advance=steps, status=status)

        yield advance
