"""The CPU-load benchmark runs end to end and prints its table (timings are its output, never asserted here)."""

from __future__ import annotations

import re
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
