"""The CPU-load benchmark runs end to end and prints its table (timings are its output, never asserted here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from helpers import REPO_ROOT, e2e_scene, run_cli


def test_cpu_load_prints_the_policy_row(tmp_path: Path):
    data = e2e_scene(tmp_path)
    result = run_cli(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "cpu_load.py"), "--data", str(data), "--steps", "20",
         "--num-random", "500", "--policies", "adaptive", "--loads", "alone", "busy",
         "--output-dir", str(tmp_path / "runs")],
        cwd=tmp_path,
    )  # fmt: skip
    assert "| policy | alone | beside a busy process |" in result.stdout
    row = re.search(r"^\| adaptive \| ([\d.]+) \| ([\d.]+) \(([\d.]+)x\) \|$", result.stdout, re.MULTILINE)
    assert row, result.stdout
    alone, busy, ratio = (float(g) for g in row.groups())
    assert alone > 0 and abs(busy / alone - ratio) < 0.01


def test_the_viewer_load_without_a_browser_fails_at_once_saying_what_to_install(tmp_path: Path):
    data = e2e_scene(tmp_path)
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # python and ns-train, no Chromium
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "cpu_load.py"), "--data", str(data), "--loads", "alone",
         "viewer", "--output-dir", str(tmp_path / "runs")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 1 and "apt install chromium" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "runs").exists()  # nothing trained
