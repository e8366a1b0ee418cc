"""One look for every long loop of the plugin (training stages, evaluation, k-means, significance, fine-tuning)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

Advance = Callable[..., None]
"""``advance(steps=1, status="")``: move the bar on and show a short status (a loss, a distortion)."""


REFRESH_PER_SECOND = 2
"""Redraws per second (rich's default is 10): bars of minutes-long work lose nothing at 2, and a process that only
waits for its trainings (distilled3dgs-run) leaves the cores to them."""


def progress_display(transient: bool = True) -> Progress:
    """The plugin's rich ``Progress``; several bars at once (e.g. parallel trainings) need ``status=""`` per task."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        transient=transient,
        refresh_per_second=REFRESH_PER_SECOND,
    )


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Advance]:
    """A transient bar over ``total`` steps; with ``enabled=False`` a no-op, so callers need no branches."""
    if not enabled:
        yield lambda steps=1, status="": None
        return
    with progress_display() as progress:
        task = progress.add_task(description, total=total, status="")

        def advance(steps: int = 1, status: str = "") -> None:
            progress.update(task, advance=steps, status=status)

        yield advance
