"""Schedules written as fractions of the run, so one default serves a 30k-step paper run and a 3k-step CPU run.

The paper's schedules are step numbers for 30,000 steps (e.g. "every 1000 steps between 15k and 25k"). We store them
as fractions of ``--max-num-iterations`` and resolve them once the trainer tells the model how long the run is.
"""

from __future__ import annotations

from dataclasses import dataclass

from distilled3dgs_ns.names import PAPER_RUN_LENGTH


def paper_fraction(step: int) -> float:
    """Express a step number of the paper's 30k-step run as a fraction of the run."""
    return step / PAPER_RUN_LENGTH


def to_step(fraction: float, run_length: int) -> int:
    """The step at ``fraction`` of a run of ``run_length`` steps."""
    return int(round(fraction * run_length))


def run_length_of(trainer) -> int:
    """Last step of the run a nerfstudio trainer is about to do: a resumed run trains ``max_num_iterations`` steps
    *after* the checkpoint's step, so schedules must be resolved against both."""
    return getattr(trainer, "_start_step", 0) + trainer.config.max_num_iterations


@dataclass
class RunWindow:
    """A periodic event inside a window of the run.

    Fires at steps ``s`` with ``start < s < stop`` and ``s % every == 0`` (exclusive bounds, as in the official
    Distilled-3DGS code). All three are fractions of the run."""

    start: float = paper_fraction(15_000)
    """Window start, as a fraction of the run (exclusive)."""
    stop: float = paper_fraction(25_000)
    """Window end, as a fraction of the run (exclusive)."""
    every: float = paper_fraction(1_000)
    """Period, as a fraction of the run (at least one step)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.start <= self.stop <= 1.0:
            raise ValueError(f"RunWindow needs 0 <= start <= stop <= 1, got start={self.start}, stop={self.stop}")
        if self.every <= 0.0:
            raise ValueError(f"RunWindow.every must be positive, got {self.every}")

    def fires(self, step: int, run_length: int) -> bool:
        """Whether the event happens at ``step`` of a run of ``run_length`` steps."""
        every = max(1, to_step(self.every, run_length))
        return to_step(self.start, run_length) < step < to_step(self.stop, run_length) and step % every == 0

    def steps(self, run_length: int) -> list[int]:
        """All steps at which the event fires (for logs, docs and tests)."""
        return [s for s in range(run_length + 1) if self.fires(s, run_length)]
