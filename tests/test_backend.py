"""The rasteriser choice where gsplat's CUDA kernels cannot be built, simulated on a CPU-only machine: ``auto`` falls
back to the torch rasteriser with one warning, ``gsplat`` refuses in one line, a model still trains, and ns-train then
ns-eval run through on the fallback, each warning once."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from helpers import e2e_scene, look_at_camera, make_model, run_cli

from distilled3dgs_ns.rasterization import backend
from distilled3dgs_ns.rasterization.backend import GsplatUnavailable, choose_backend, gsplat_problem
from distilled3dgs_ns.teacher import TeacherModelConfig

CUDA = torch.device("cuda")


@pytest.fixture
def no_gsplat(monkeypatch):
    """gsplat's extension module as a machine without a CUDA toolkit leaves it (``_C = None``)."""
    fake = type(sys)("gsplat.cuda._backend")
    fake._C = None
    monkeypatch.setitem(sys.modules, "gsplat.cuda._backend", fake)
    gsplat_problem.cache_clear()
    backend._warn_fallback.cache_clear()
    yield
    gsplat_problem.cache_clear()
    backend._warn_fallback.cache_clear()


def test_no_toolkit_falls_back_once_with_the_way_to_the_fast_path(no_gsplat):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert [choose_backend("auto", CUDA) for _ in range(5)] == ["torch"] * 5
    assert len(caught) == 1 and "no CUDA toolkit" in str(caught[0].message) and "CUDA_HOME" in str(caught[0].message)
    assert choose_backend("torch", CUDA) == "torch" and choose_backend("auto", torch.device("cpu")) == "torch"
    with pytest.raises(GsplatUnavailable, match=r"rasterizer gsplat: gsplat found no CUDA toolkit .*or use auto"):
        choose_backend("gsplat", CUDA)


def test_a_failed_build_is_summarised_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "gsplat.cuda._backend", None)  # importing it raises, as a failed JIT build does
    gsplat_problem.cache_clear()
    try:
        problem = gsplat_problem()
    finally:
        gsplat_problem.cache_clear()
    assert problem.startswith("gsplat's CUDA kernels failed to build (ModuleNotFoundError: import of")
    assert "\n" not in problem


def test_the_choice_is_made_once_per_process(no_gsplat, monkeypatch):
    assert choose_backend("auto", CUDA) == "torch"
    fixed = type(sys)("gsplat.cuda._backend")
    fixed._C = object()  # the toolkit appears mid-run: the run keeps its backend
    monkeypatch.setitem(sys.modules, "gsplat.cuda._backend", fixed)
    assert choose_backend("auto", CUDA) == "torch"


def test_a_model_trains_on_the_fallback(no_gsplat, monkeypatch):
    monkeypatch.setattr(backend, "on_cuda", lambda device: True)  # CPU tensors stand in for CUDA ones
    model = make_model(TeacherModelConfig(num_downscales=0), num_points=200).eval()  # no trainer: no strategy hooks
    camera = look_at_camera((2.0, 0.5, 1.0), size=24)
    optimizer = torch.optim.Adam([model.gauss_params["means"], model.gauss_params["features_dc"]], lr=1e-2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses = []
        for _ in range(3):
            rgb = model.get_outputs(camera)["rgb"]
            loss = ((rgb - 0.5) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
    fallbacks = [w for w in caught if "pure-PyTorch rasteriser instead" in str(w.message)]
    assert len(fallbacks) == 1 and losses[-1] < losses[0]


# Runs a console script (ns-train, ns-eval) in a process where importing gsplat's kernels fails, as after a failed JIT
# build, and the CPU tensors count as CUDA ones, so ``rasterizer auto`` meets the failure a GPU user would.
_SIMULATED_FAILURE = """
import sys
from importlib.metadata import entry_points
sys.modules["gsplat.cuda._backend"] = None
from distilled3dgs_ns.rasterization import backend
backend.on_cuda = lambda device: True
command = sys.argv.pop(1)
sys.argv[0] = command
sys.exit(entry_points(group="console_scripts")[command].load()())
"""
FALLBACK_WARNING = "rendering with the pure-PyTorch rasteriser instead"


def _run_with_failed_build(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``command`` as a user runs it, every warning printed each time it is raised (the "once" is ours to keep)."""
    return run_cli([sys.executable, "-c", _SIMULATED_FAILURE, *command], cwd, env={"PYTHONWARNINGS": "always"})


@pytest.mark.slow
def test_ns_train_and_ns_eval_run_on_the_fallback_with_one_warning_each(tmp_path):
    scene = e2e_scene(tmp_path)
    train = _run_with_failed_build(
        ["ns-train", "distilled3dgs-teacher", "--data", str(scene), "--output-dir", "outputs",
         "--experiment-name", "fallback", "--timestamp", "run", "--max-num-iterations", "30",
         "--steps-per-save", "30", "--machine.device-type", "cpu", "--vis", "tensorboard",
         "--pipeline.model.num-random", "2000", "--pipeline.model.warmup-length", "10",
         "--pipeline.model.refine-every", "10", "blender-data"],
        cwd=tmp_path,
    )  # fmt: skip
    config = tmp_path / "outputs" / "fallback" / "distilled3dgs-teacher" / "run" / "config.yml"
    assert sorted(p.name for p in config.parent.joinpath("nerfstudio_models").iterdir()) == ["step-000000029.ckpt"]
    evaluated = _run_with_failed_build(
        ["ns-eval", "--load-config", str(config), "--output-path", "eval.json"], cwd=tmp_path
    )
    for result in (train, evaluated):
        output = result.stdout + result.stderr
        assert output.count(FALLBACK_WARNING) == 1, output[-3000:]
        assert "gsplat's CUDA kernels failed to build (ModuleNotFoundError" in output
    assert 5.0 < json.loads((tmp_path / "eval.json").read_text())["results"]["psnr"] < 60.0
