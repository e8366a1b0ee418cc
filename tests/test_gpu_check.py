"""The prepared GPU check runs on a CPU-only machine too: its CUDA rows say so, its CPU rows agree with the shared
reference (the agreement the GPU run is held to)."""

from __future__ import annotations

import re
import subprocess
import sys

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
    assert re.search(r"^\| torch, CPU \| 20000 \| [\d.]+ \| [\d.]+ \|$", out, re.MULTILINE)
