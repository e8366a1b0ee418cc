"""The CPU thread policy: counts chosen from the load other programs put on our cores."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from distilled3dgs_ns.cpu_threads import (
    AdaptiveThreads,
    CpuSample,
    FixedThreads,
    cores_used_by_others,
    read_sample,
    thread_policy,
)


def machine(others: list[float], own: float = 1.0) -> list[CpuSample]:
    """Samples one second apart; in second i other programs keep ``others[i]`` of our cores busy."""
    samples = [CpuSample(wall_s=0.0, busy_s=0.0, own_s=0.0)]
    for second, busy in enumerate(others, start=1):
        last = samples[-1]
        samples.append(CpuSample(wall_s=float(second), busy_s=last.busy_s + busy + own, own_s=last.own_s + own))
    return samples


def run_policy(policy: AdaptiveThreads, samples: list[CpuSample]) -> list[int]:
    return [policy.observe(sample) for sample in samples]


def test_others_are_the_busy_time_less_our_own():
    before = CpuSample(wall_s=10.0, busy_s=100.0, own_s=40.0)
    after = CpuSample(wall_s=12.0, busy_s=104.0, own_s=42.5)
    assert cores_used_by_others(before, after) == pytest.approx(0.75)


def test_an_idle_machine_keeps_every_thread():
    policy = AdaptiveThreads(max_threads=2, cores={0, 1})
    assert run_policy(policy, machine([0.1] * 5)) == [2] * 6


def test_a_change_is_told_once(capsys):
    policy = AdaptiveThreads(max_threads=2, cores={0, 1})
    run_policy(policy, machine([0.67] * 3))
    assert capsys.readouterr().out.count("CPU threads 2 -> 1: other programs keep 0.7 cores busy") == 1


def test_a_busy_program_takes_a_thread_at_once():
    # Beside one busy process, 3 runnable threads share 2 cores: the other program gets about 2/3 of one.
    policy = AdaptiveThreads(max_threads=2, cores={0, 1})
    assert run_policy(policy, machine([0.67] * 3)) == [2, 1, 1, 1]


def test_the_thread_comes_back_only_after_the_core_stays_free():
    policy = AdaptiveThreads(max_threads=2, cores={0, 1}, rise_after=2)
    # Free for one second, busy again, then free for good: the pause does not bring the thread back.
    samples = machine([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    assert run_policy(policy, samples) == [2, 1, 1, 1, 1, 1, 2, 2]


def test_never_more_than_the_cap_nor_fewer_than_one():
    many = AdaptiveThreads(max_threads=4, cores=set(range(16)))
    assert many.wanted(0.0) == 4
    assert many.wanted(14.0) == 2
    assert many.wanted(20.0) == 1


def test_samples_closer_than_the_interval_change_nothing():
    policy = AdaptiveThreads(max_threads=2, cores={0, 1}, interval_s=1.0)
    samples = [CpuSample(wall_s=t / 10, busy_s=t / 10 * 2.0, own_s=t / 10) for t in range(9)]
    assert run_policy(policy, samples) == [2] * 9


def test_proc_stat_counts_only_our_cores(tmp_path: Path):
    ticks = os.sysconf("SC_CLK_TCK")
    stat = tmp_path / "stat"
    stat.write_text(
        f"cpu  {9 * ticks} 0 0 0 0 0 0 0 0 0\n"
        f"cpu0 {ticks} 0 {ticks} 500 7 0 0 0 0 0\n"
        f"cpu1 {5 * ticks} 0 0 500 0 0 0 0 0 0\n"
        f"cpu2 {3 * ticks} 0 0 500 0 0 0 0 0 0\n"
        "intr 1 2 3\n"
    )
    sample = read_sample({0, 2}, stat)
    assert sample is not None
    assert sample.busy_s == pytest.approx(5.0)


def test_no_proc_stat_means_no_sample(tmp_path: Path):
    assert read_sample({0}, tmp_path / "missing") is None


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux's /proc/stat")
def test_a_real_busy_process_is_seen():
    cores = set(os.sched_getaffinity(0))
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        before = read_sample(cores)
        time.sleep(1.0)
        after = read_sample(cores)
    finally:
        spinner.kill()
        spinner.wait()
    assert before is not None and after is not None
    assert cores_used_by_others(before, after) > 0.5


def test_a_fixed_count_is_set_and_kept():
    start = torch.get_num_threads()
    try:
        policy = thread_policy(1)
        assert isinstance(policy, FixedThreads)
        policy.update()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(start)


def test_the_adaptive_cap_is_torchs_count_at_start():
    policy = thread_policy(None)
    assert isinstance(policy, AdaptiveThreads)
    assert policy.max_threads == torch.get_num_threads()


def count_in_new_thread(policy: AdaptiveThreads | FixedThreads) -> int:
    """The torch thread count a fresh thread (the viewer's render thread, say) has after calling ``update``."""
    seen: list[int] = []

    def render() -> None:
        policy.update()
        seen.append(torch.get_num_threads())

    worker = threading.Thread(target=render)
    worker.start()
    worker.join()
    return seen[0]


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs torch to start with 2 threads or more")
def test_every_calling_thread_gets_the_count():
    start = torch.get_num_threads()
    assert count_in_new_thread(FixedThreads(1)) == 1
    adaptive = AdaptiveThreads(max_threads=start, threads=1)
    assert count_in_new_thread(adaptive) == 1
    assert torch.get_num_threads() == start  # torch keeps one count per thread: the main thread's is untouched


KEPT_PROBE = """
import sys, torch
if sys.argv[1] == "policy":
    from distilled3dgs_ns.cpu_threads import thread_policy
    thread_policy(None)
resident = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
block = torch.ones(5 * 2**20)  # 20 MB, which glibc would take from and give back to the kernel
before = resident()
del block
print(before - resident())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_the_cpu_policy_keeps_freed_memory_for_the_next_step():
    """After the process's CPU policy starts, a freed 20 MB tensor stays in the process (no page faults to get it
    back next step); without it glibc returns it to the kernel."""

    def returned_mb(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", KEPT_PROBE, mode], capture_output=True, text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])

    assert returned_mb("plain") > 15
    assert returned_mb("policy") < 1
