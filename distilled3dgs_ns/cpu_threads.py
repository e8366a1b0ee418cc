"""How many threads torch uses on a CPU, re-chosen while training as other programs take and free cores.

torch's OpenMP threads wait for one another at the end of every parallel operator. When another program holds a core,
the operating system deschedules one of our threads for a whole time slice and every operator waits for it: a lego-100
teacher on 2 cores took 0.093 s/step alone and 0.456 s/step beside one busy process with torch's default 2 threads,
but 0.126 s/step with 1 thread. A passive OpenMP wait policy avoids the stall too, but costs 1.7x on an idle machine
(0.160 s/step) and must be set before torch loads. So the count follows the cores the rest of the machine leaves free,
measured from ``/proc/stat`` (Linux); elsewhere torch's own choice is kept.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from nerfstudio.utils.rich_utils import CONSOLE

from distilled3dgs_ns.cpu_memory import keep_freed_memory

PROC_STAT = Path("/proc/stat")
TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class CpuSample:
    """Busy CPU time of our cores (all programs) and of this process, at one moment (seconds)."""

    wall_s: float
    busy_s: float
    own_s: float


def our_cores() -> set[int]:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def read_sample(cores: set[int], stat: Path = PROC_STAT) -> CpuSample | None:
    """Now's busy time of ``cores`` and of this process; None where the kernel does not publish it."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    busy = 0
    for line in lines:
        name, *ticks = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cores:
            continue
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(t) for t in ticks[:8])
        busy += user + nice + system + irq + softirq + steal
    times = os.times()
    return CpuSample(wall_s=time.monotonic(), busy_s=busy / TICKS_PER_S, own_s=times.user + times.system)


def cores_used_by_others(before: CpuSample, after: CpuSample) -> float:
    """Average number of our cores that other programs kept busy between two samples."""
    wall = after.wall_s - before.wall_s
    if wall <= 0:
        return 0.0
    others = (after.busy_s - before.busy_s) - (after.own_s - before.own_s)
    return max(0.0, others / wall)


@dataclass
class AdaptiveThreads:
    """A thread count that drops at once when other programs take cores and rises again once they stay free.

    ``update`` is cheap (at most one read of ``/proc/stat`` per ``interval_s``): call it before every training step
    and render. A core counts as taken when other programs keep it busy at least ``taken_share`` of the time. Dropping
    is immediate (a stalled pool costs 5x); rising waits for ``rise_after`` consecutive free intervals, so a program
    that pauses briefly does not flip the count back and forth.
    """

    max_threads: int
    cores: set[int] = field(default_factory=our_cores)
    interval_s: float = 1.0
    taken_share: float = 0.5
    rise_after: int = 2
    threads: int = 0
    _last: CpuSample | None = None
    _free_streak: int = 0

    def __post_init__(self) -> None:
        self.max_threads = max(1, self.max_threads)
        self.threads = self.threads or self.max_threads

    def wanted(self, others: float) -> int:
        """Threads for a machine where other programs keep ``others`` of our cores busy."""
        taken = int(others + 1.0 - self.taken_share)
        return max(1, min(self.max_threads, len(self.cores) - taken))

    def _due(self, now: float) -> bool:
        """Whether a sample taken at ``now`` is far enough from the last one to count."""
        return self._last is None or now - self._last.wall_s >= self.interval_s

    def observe(self, sample: CpuSample) -> int:
        """Fold in one sample; the thread count to use from now on."""
        if self._last is None:
            self._last = sample
        if not self._due(sample.wall_s):
            return self.threads
        last, self._last = self._last, sample
        others = cores_used_by_others(last, sample)
        wanted = self.wanted(others)
        before = self.threads
        if wanted < self.threads:
            self.threads, self._free_streak = wanted, 0
        elif wanted > self.threads:
            self._free_streak += 1
            if self._free_streak >= self.rise_after:
                self.threads, self._free_streak = wanted, 0
        else:
            self._free_streak = 0
        if self.threads != before:
            CONSOLE.log(f"CPU threads {before} -> {self.threads}: other programs keep {others:.1f} cores busy")
        return self.threads

    def update(self) -> None:
        """Sample the machine and set the calling thread's torch thread count when it differs.

        torch keeps the count per calling thread (OpenMP), so the training thread and the viewer's render thread
        each pick the current count up when they call this.
        """
        sample = read_sample(self.cores) if self._due(time.monotonic()) else None
        if sample is not None:
            self.observe(sample)
        apply_threads(self.threads)


@dataclass
class FixedThreads:
    """A thread count the user chose: set once, never changed."""

    threads: int

    def update(self) -> None:
        """Set the calling thread's torch thread count."""
        apply_threads(self.threads)


def apply_threads(threads: int) -> None:
    """Give the calling thread ``threads`` torch threads (torch keeps one count per calling thread)."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@functools.cache
def thread_policy(threads: int | None) -> AdaptiveThreads | FixedThreads:
    """The process's CPU thread policy for a setting: ``threads`` fixed, or None to follow the free cores.

    One per process and setting, so every model (the student, teachers rendered in the viewer) and the export's
    fine-tuning share one count and one view of the load. The adaptive count never exceeds torch's count at the first
    call, which honours ``OMP_NUM_THREADS`` (how ``distilled3dgs-run --jobs`` divides the cores among trainings).
    The first call also sets the process's memory policy for CPU work (``cpu_memory.py``).
    """
    keep_freed_memory()
    if threads is not None:
        return FixedThreads(threads)
    return AdaptiveThreads(max_threads=torch.get_num_threads())
