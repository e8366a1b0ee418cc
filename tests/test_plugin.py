"""Registration with nerfstudio, the checkpoint-loading fix and the import-order trap."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_entry_point_registers_the_teacher():
    from nerfstudio.plugins.registry import discover_methods

    methods, descriptions = discover_methods()
    assert "distilled3dgs-teacher" in methods, "is the package installed (pip install -e .)?"
    assert "variant" in descriptions["distilled3dgs-teacher"]


def test_eval_utils_sees_plugin_methods():
    # the import-order trap: eval_utils must bind the merged method table, with our methods in it
    result = _run(
        "import nerfstudio.utils.eval_utils as eu; "
        "assert 'distilled3dgs-teacher' in eu.all_methods, sorted(eu.all_methods)"
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_safe_loading_of_numpy_scalars_in_checkpoints(tmp_path):
    import distilled3dgs_ns  # noqa: F401  (importing applies the fix)

    path = tmp_path / "ckpt.pt"
    torch.save({"schedulers": {"means": {"_last_lr": [np.float64(1.6e-4)]}}, "step": 3}, path)
    loaded = torch.load(path)  # weights_only=True is the default since torch 2.6
    assert loaded["schedulers"]["means"]["_last_lr"][0] == pytest.approx(1.6e-4)


def test_safe_loading_still_rejects_arbitrary_objects(tmp_path):
    import distilled3dgs_ns  # noqa: F401

    path = tmp_path / "evil.pt"
    torch.save({"obj": subprocess.CompletedProcess(args=[], returncode=0)}, path)
    with pytest.raises(Exception, match="[Ww]eights"):
        torch.load(path)


@pytest.mark.parametrize(
    "command, expected",
    [
        (["ns-train", "--help"], ["distilled3dgs-teacher"]),
        (
            ["ns-train", "distilled3dgs-teacher", "--help"],
            ["--pipeline.model.variant", "--pipeline.model.rasterizer", "--pipeline.model.dropout.rate",
             "--pipeline.model.perturbation.window.start", "fraction of the run"],
        ),
    ],
)  # fmt: skip
def test_cli_help(command, expected):
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr[-2000:]
    text = " ".join(result.stdout.split())
    for needle in expected:
        assert needle in text, needle


@pytest.mark.parametrize(
    "module", ["teacher", "student", "student_pipeline", "portable_splatfacto", "depth", "regularizers"]
)
def test_each_config_module_imports_first_in_a_fresh_interpreter(module):
    # A saved config.yml names these modules, so nerfstudio may import any of them first; nerfstudio 1.1.5's
    # writer fails when it is imported before its configs (a circular import that took a whole test file down).
    result = subprocess.run(
        [sys.executable, "-c", f"import distilled3dgs_ns.{module}"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
