"""End to end on the CPU, through the real command lines: three teachers, then the student distilled from them
(teacher checks, blend targets, prunes and geometry loss all firing in a few dozen steps), ns-eval, ns-export and
resume. Uses the real lego-100 scene from shared/ when present, the embedded scene otherwise."""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import e2e_scene, run_cli

TEACHER_STEPS = 40
STUDENT_STEPS = 40
VARIANTS = ("standard", "perturbed", "dropout")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return e2e_scene(tmp_path_factory.mktemp("scene"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e-student")


def _common(scene: Path, experiment: str, steps: int) -> list[str]:
    """Small, fast settings: white background (Blender's images are RGB on white), few Gaussians, densification
    from step 10, splatfacto's quarter resolution (for its first 3000 steps, so all of these runs)."""
    return [
        "--data", str(scene),
        "--output-dir", "outputs",
        "--experiment-name", experiment,
        "--timestamp", "run",
        "--max-num-iterations", str(steps),
        "--steps-per-save", "20",
        "--steps-per-eval-image", "1000",
        "--steps-per-eval-all-images", "100000",
        "--machine.device-type", "cpu",
        "--vis", "tensorboard",
        "--pipeline.model.background-color", "white",
        "--pipeline.model.num-random", "1000",
        "--pipeline.model.random-scale", "2.6",
        "--pipeline.model.warmup-length", "10",
        "--pipeline.model.refine-every", "10",
        "--pipeline.model.cull-alpha-thresh", "0.005",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def teachers(scene, workdir) -> list[Path]:
    """One teacher of each variant; their config.yml paths, relative to ``workdir``."""
    commands = [
        ["ns-train", "distilled3dgs-teacher", *_common(scene, f"teacher-{variant}", TEACHER_STEPS),
         "--pipeline.model.variant", variant, "blender-data"]
        for variant in VARIANTS
    ]  # fmt: skip
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:  # the three trainings use the cores together
        list(pool.map(lambda command: run_cli(command, cwd=workdir), commands))
    return [
        Path("outputs") / f"teacher-{variant}" / "distilled3dgs-teacher" / "run" / "config.yml" for variant in VARIANTS
    ]


def _student_args(scene: Path, teachers: list[Path], experiment: str, steps: int) -> list[str]:
    return [
        "ns-train", "distilled3dgs-student",
        "--pipeline.teachers", *map(str, teachers),
        "--pipeline.teacher-min-psnr", "10",  # a 40-step teacher is blurry; another scene scores lower still
        "--save-only-latest-checkpoint", "False",  # keep step 20 (after the sampling prune) to resume from
        *_common(scene, experiment, steps),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def student(scene, workdir, teachers) -> Path:
    """The student, distilled from the three teachers; its run folder."""
    result = run_cli([*_student_args(scene, teachers, "student", STUDENT_STEPS), "blender-data"], cwd=workdir)
    log = result.stdout + result.stderr
    for index, variant in enumerate(VARIANTS):
        assert f"teacher {index} ({variant}, step {TEACHER_STEPS - 1})" in log, log[-3000:]
    assert "importance sampling kept" in log and "importance mass cut kept" in log
    return workdir / "outputs" / "student" / "distilled3dgs-student" / "run"


def _gaussians(run: Path) -> tuple[int, int]:
    """(step, #Gaussians) of the newest checkpoint of a run."""
    checkpoint = sorted((run / "nerfstudio_models").glob("step-*.ckpt"))[-1]
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    return state["step"], state["pipeline"]["_model.gauss_params.means"].shape[0]


def test_student_checkpoints_hold_no_teacher(student):
    step, count = _gaussians(student)
    assert step == STUDENT_STEPS - 1 and count > 0
    checkpoint = sorted((student / "nerfstudio_models").glob("step-*.ckpt"))[-1]
    keys = torch.load(checkpoint, map_location="cpu", weights_only=False)["pipeline"]
    assert not any("teacher" in key for key in keys)


def test_eval_reports_quality_count_and_size_without_teacher_files(student, teachers, workdir, tmp_path):
    hidden = tmp_path / "hidden"
    (workdir / "outputs" / "teacher-standard").rename(hidden)  # ns-eval must not need any teacher
    try:
        output = workdir / "eval-student.json"
        run_cli(["ns-eval", "--load-config", str(student / "config.yml"), "--output-path", str(output)], cwd=workdir)
    finally:
        hidden.rename(workdir / "outputs" / "teacher-standard")
    results = json.loads(output.read_text())["results"]
    assert results["num_gaussians"] == _gaussians(student)[1]
    assert results["size_mb"] == pytest.approx(results["num_gaussians"] * 59 * 4 / 1e6)
    assert 5.0 < results["psnr"] < 60.0 and 0.0 < results["ssim"] <= 1.0


def test_export_writes_the_students_gaussians(student, workdir):
    from plyfile import PlyData

    out = workdir / "export-student"
    run_cli(
        ["ns-export", "gaussian-splat", "--load-config", str(student / "config.yml"), "--output-dir", str(out)], workdir
    )
    vertex = PlyData.read(str(out / "splat.ply"))["vertex"]
    assert 0 < vertex.count <= _gaussians(student)[1]
    for name in ("x", "f_dc_0", "opacity", "scale_0", "rot_0"):
        assert np.isfinite(np.asarray(vertex[name])).all(), name


def test_student_resumes_mid_schedule_without_pruning_again(scene, teachers, student, workdir):
    # the step-20 checkpoint was written after that step's sampling prune; nerfstudio then trains
    # --max-num-iterations more steps, so 19 more finish the same 40-step schedule (mass cut at step 27)
    checkpoint = student / "nerfstudio_models" / "step-000000020.ckpt"
    args = _student_args(scene, teachers, "student-resumed", STUDENT_STEPS - 21)
    result = run_cli([*args, "--load-checkpoint", str(checkpoint), "blender-data"], cwd=workdir)
    log = result.stdout + result.stderr
    assert "Done loading Nerfstudio checkpoint" in log
    assert "importance sampling kept" not in log  # done before the checkpoint
    assert "importance mass cut kept" in log  # still to come
    step, count = _gaussians(workdir / "outputs" / "student-resumed" / "distilled3dgs-student" / "run")
    assert step == STUDENT_STEPS - 1
    assert 0 < count < torch.load(checkpoint, weights_only=False)["pipeline"]["_model.gauss_params.means"].shape[0]


def test_a_student_given_as_teacher_stops_ns_train_with_one_message(scene, student, workdir):
    """Teacher errors inside ns-train are their message alone, not a 15-frame traceback."""
    args = _student_args(scene, [student / "config.yml"], "student-of-student", 5)
    result = subprocess.run(
        [*args, "blender-data"], cwd=workdir, capture_output=True, text=True, timeout=600,
        env={**os.environ, "DISTILLED3DGS_NO_LPIPS": "1"},
    )  # fmt: skip
    assert result.returncode == 1
    assert "is a distilled student, not a teacher" in result.stderr and "Traceback" not in result.stderr
