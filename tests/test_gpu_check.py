"""The prepared GPU check runs on a CPU-only machine too: its CUDA rows say so, its CPU rows agree with the shared
reference (the agreement the GPU run is held to)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO_ROOT, require_shared


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the check trains for minutes: run it by hand")
def test_gpu_check_runs_without_a_gpu():
    scene = require_shared("reference/cpu-raster/scene_n20000_256x256_seed0.npz")
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "gpu_check.py"), "--scene", str(scene), "--repeats", "1"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    row = re.search(r"^\| torch, CPU \| ([\d.]+) \| (.*) \|$", out, re.MULTILINE)
    assert row and float(row.group(1)) > 50  # the shared reference: within ~57 dB for a correct rasteriser
    assert all(float(c) > 0.998 for c in row.group(2).split(" | "))
    assert "| gsplat, CUDA | no GPU |" in out and "| demo student | no GPU |" in out
    assert "| tests/test_cuda.py | no GPU |" in out
    assert re.search(r"^\| torch, CPU \| 20000 \| [\d.]+ \| [\d.]+ \|$", out, re.MULTILINE)


@pytest.fixture
def gpu_check(monkeypatch):
    """The check's module, imported as its script imports its neighbours."""
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    import gpu_check

    return gpu_check


def test_a_training_row_says_what_stopped_it_and_the_rows_after_it_still_run(gpu_check, tmp_path):
    log = tmp_path / "train.log"
    log.write_text("step 10\nRuntimeError: CUDA error: no kernel image is available\n\n")

    def fails(log, left):
        raise subprocess.CalledProcessError(1, ["ns-train"])

    def too_slow(log, left):
        raise subprocess.TimeoutExpired(["ns-train"], left)

    deadline = time.perf_counter() + 600
    assert gpu_check.attempt("t", log, deadline, lambda log, left: (12.3, 4567, 31.234)) == "| t | 12 | 4567 | 31.23 |"
    failed = gpu_check.attempt("t", log, deadline, fails)
    assert failed.startswith("| t | failed: CalledProcessError: ") and failed.endswith(
        "CUDA error: no kernel image is available | | |"
    )
    assert "stopped at the check's --budget-s" in gpu_check.attempt("t", log, deadline, too_slow)
    spent = gpu_check.attempt("t", log, time.perf_counter() + 10, lambda log, left: pytest.fail("started"))
    assert spent == "| t | skipped: the check's --budget-s is spent | | |"


def test_a_run_past_its_time_is_stopped_with_the_processes_it_started(gpu_check, tmp_path):
    pid_file = tmp_path / "child.pid"
    command = ["bash", "-c", f"sleep 60 & echo $! > {pid_file}; wait"]
    start = time.perf_counter()
    with pytest.raises(subprocess.TimeoutExpired):
        gpu_check.run_group(command, tmp_path / "log", timeout_s=1.0)
    assert time.perf_counter() - start < 30
    child = int(pid_file.read_text())
    deadline = time.perf_counter() + 10
    while time.perf_counter() < deadline and _alive(child):
        time.sleep(0.05)
    assert not _alive(child)
    with pytest.raises(subprocess.CalledProcessError):
        gpu_check.run_group(["bash", "-c", "exit 3"], tmp_path / "log", timeout_s=30)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed but not yet reaped by init, counts as stopped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_a_backend_that_fails_on_the_reference_scene_is_a_row_not_a_crash(gpu_check, monkeypatch):
    scene_path = require_shared("reference/cpu-raster/scene_n20000_256x256_seed0.npz")
    scene = gpu_check.load_scene(scene_path)
    real = gpu_check.render_and_grads
    monkeypatch.setattr(gpu_check, "backends", lambda: [("torch, CPU", torch.device("cpu"), "torch"),
                                                        ("broken", torch.device("cpu"), "broken")])  # fmt: skip

    def render(scene, device, backend):
        if backend == "broken":
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore")
        return real(scene, device, backend)

    monkeypatch.setattr(gpu_check, "render_and_grads", render)
    lines = gpu_check.agreement_table(scene, gpu_check.Args(scene=scene_path))
    assert any(line.startswith("| torch, CPU | 67.") for line in lines)
    assert (
        "| broken | failed: RuntimeError: CUDA error: an illegal memory access was encountered |"
        + " |" * len(gpu_check.PARAMS)
        in lines
    )


def test_the_cuda_tests_row_runs_them_and_reports_their_summary(gpu_check, tmp_path):
    rows = list(gpu_check.cuda_tests(tmp_path, time.perf_counter() + 300, cuda=True))
    expected = "skipped" if not torch.cuda.is_available() else "passed"
    assert rows[2].startswith("| tests/test_cuda.py | ") and expected in rows[2], rows
    assert (tmp_path / "logs" / "test_cuda.log").is_file()
