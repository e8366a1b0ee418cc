"""distilled3dgs-run: presets, stage records, scheduling, bad input; end to end with tiny budgets (slow)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO_ROOT

from distilled3dgs_ns import run as run_module
from distilled3dgs_ns.checkpoints import gaussian_state, newest_checkpoint, read_checkpoint
from distilled3dgs_ns.compression.encode import visible_mask
from distilled3dgs_ns.presets import PresetError, available_presets, load_preset
from distilled3dgs_ns.run import (
    BASELINES,
    Run,
    RunConfig,
    SplatfactoSchedule,
    StudentResult,
    Training,
    ns_train_command,
    parse_config,
)
from distilled3dgs_ns.run import evaluate as evaluate_module
from distilled3dgs_ns.run import launch as launch_module
from distilled3dgs_ns.run import recipes as recipe_module
from distilled3dgs_ns.run.evaluate import Evaluator
from distilled3dgs_ns.schedules import to_step
from distilled3dgs_ns.stages import RunSetupError, StageBook, fingerprint

# --------------------------------------------------------------------------------------------------- presets


def test_every_shipped_preset_loads_and_sets_its_values():
    names = available_presets()
    assert {"demo", "cpu", "paper-mipnerf360", "paper-tanks-temples"} <= set(names)
    for name in names:
        config = load_preset(name, RunConfig(preset=name))
        assert config.teacher_steps >= 1 and config.student_steps >= 1
    assert load_preset("paper-tanks-temples", RunConfig()).prune_sample_factor == 0.5
    assert load_preset("paper-mipnerf360", RunConfig()).prune_sample_factor == 0.9
    demo = load_preset("demo", RunConfig())
    assert demo.embedded_scene and demo.data is None


def test_command_line_overrides_the_preset():
    config = parse_config(["--preset", "demo", "--teacher-steps", "7", "--schedule.densify-until", "0.3"])
    preset = load_preset("demo", RunConfig())
    assert config.teacher_steps == 7
    assert config.schedule.densify_until == 0.3
    assert config.student_steps == preset.student_steps  # untouched fields keep the preset's value
    assert config.model_args == preset.model_args


def test_unknown_preset_and_unknown_key_are_clear_errors(tmp_path):
    with pytest.raises(PresetError, match="no preset named 'nope'.*demo"):
        load_preset("nope", RunConfig())
    bad = tmp_path / "mine.yaml"
    bad.write_text("teacher_stpes: 10\n")
    with pytest.raises(PresetError, match="unknown option 'teacher_stpes'"):
        load_preset(str(bad), RunConfig())


def test_schedule_scales_splatfacto_steps_with_the_run_length():
    schedule = SplatfactoSchedule(warmup=0.1, densify_until=0.5, sh_degree_every=0.125, resolution_every=1.0)
    for steps in (800, 30_000):
        options = schedule.options(steps)
        value = {options[i]: options[i + 1] for i in range(0, len(options), 2)}
        assert value["--pipeline.model.stop-split-at"] == str(steps // 2)
        assert value["--pipeline.model.warmup-length"] == str(steps // 10)
        assert value["--pipeline.model.sh-degree-interval"] == str(steps // 8)
        assert value["--optimizers.means.scheduler.max-steps"] == str(steps)
    slow_decay = SplatfactoSchedule(lr_decay_length=10.0).options(3000)
    assert slow_decay[slow_decay.index("--optimizers.means.scheduler.max-steps") + 1] == "30000"


def test_resumed_command_trains_the_remaining_steps(tmp_path):
    config = RunConfig(data=tmp_path, device_type="cpu", dataparser_args="--scale-factor 1.0")
    training = Training(stage="teacher-standard", method="distilled3dgs-teacher", steps=100, options=["--x", "1"])
    fresh = ns_train_command(training, config, tmp_path, tmp_path / "runs", None)
    resumed = ns_train_command(training, config, tmp_path, tmp_path / "runs", 59)
    assert fresh[fresh.index("--max-num-iterations") + 1] == "100"
    assert resumed[resumed.index("--max-num-iterations") + 1] == "40"
    load_dir = Path(resumed[resumed.index("--load-dir") + 1])
    assert load_dir == tmp_path / "runs" / "teacher-standard" / "distilled3dgs-teacher" / "run" / "nerfstudio_models"
    assert fresh[-3:] == ["blender-data", "--scale-factor", "1.0"]  # dataparser subcommand last, with its options


# --------------------------------------------------------------------------------------------------- records


def test_stage_book_skips_refuses_other_settings_and_forgets(tmp_path):
    book = StageBook(tmp_path / "stages")
    key = fingerprint({"command": ["a", "b"]})
    assert book.check("teacher-standard", key) is None
    book.finish("teacher-standard", key, train_s=3.0)
    assert book.check("teacher-standard", key)["train_s"] == 3.0
    with pytest.raises(RunSetupError, match="--redo teacher-standard"):
        book.check("teacher-standard", fingerprint({"command": ["a", "c"]}))
    assert book.forget("teacher-standard") and book.check("teacher-standard", key) is None


def test_redo_forgets_the_stage_and_what_depends_on_it(tmp_path):
    run = Run(RunConfig(data=tmp_path, output_dir=tmp_path / "out"), log=lambda _: None)
    for name in ("teacher-standard", "teacher-perturbed", "student", "eval-teacher-standard", "eval-student"):
        run.book.finish(name, "k")
    run.forget(["teacher-standard"])
    assert run.book.get("teacher-perturbed") is not None  # an independent stage is kept
    for name in ("teacher-standard", "student", "eval-teacher-standard", "eval-student"):
        assert run.book.get(name) is None


def test_baselines_join_the_graph_and_follow_the_student(tmp_path):
    run = Run(RunConfig(data=tmp_path, output_dir=tmp_path / "out", baselines=True), log=lambda _: None)
    graph = run.stage_inputs()
    assert graph["baseline-pruned-teacher"] == ["scene", "student", "teacher-standard"]
    assert graph["report"][-3:] == [f"eval-{name}" for name in BASELINES]
    for name in ("student", *BASELINES, *(f"eval-{b}" for b in BASELINES)):
        run.book.finish(name, "k")
    run.forget(["student"])
    assert all(run.book.get(name) is None for name in BASELINES)
    plain = Run(RunConfig(data=tmp_path, output_dir=tmp_path / "plain"), log=lambda _: None)
    assert not any(name.startswith("baseline") for name in plain.stage_inputs())


def _recipes(config: RunConfig):
    return Run(config, log=lambda _: None).recipes


def _parse(training: Training, config: RunConfig, tmp_path: Path):
    """The TrainerConfig ns-train would build from ``training``'s command line."""
    import tyro
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    return tyro.cli(AnnotatedBaseConfigUnion, args=ns_train_command(training, config, tmp_path, tmp_path, None)[1:])


def test_a_teacher_initialised_student_starts_from_the_standard_teacher(tmp_path):
    config = load_preset("demo", RunConfig(preset="demo", data=tmp_path, output_dir=tmp_path / "out"))
    assert config.student_init == "teacher"  # the demo preset's recipe (issue 10)
    run = Run(config, log=lambda _: None)
    standard = tmp_path / "teacher" / "config.yml"
    student = _parse(run.recipes.student_training([standard], 10_000), run.config, tmp_path).pipeline
    assert student.init_from == run.recipes.standard_config() and student.model.sh_degree_interval == 1
    assert student.teachers == [standard] and student.model.prune_count == 1500  # 15% of 10k
    for teachers in (10_865, 12_302, 7):  # the budget never exceeds its share (lego-100's 10865: 1629, not 1630)
        budget = _parse(run.recipes.student_training([standard], teachers), run.config, tmp_path).pipeline.model
        budget = budget.prune_count
        assert budget <= 0.15 * teachers < budget + 1 or budget == 1
    no_kd_training = run.recipes.baseline_trainings(standard, 10_000, StudentResult(1480, 0.7, True))[0]
    no_kd = _parse(no_kd_training, run.config, tmp_path)
    assert no_kd.pipeline.init_from is None  # without teachers: the teacher's Gaussians are what the student learnt
    random_start = dataclasses.replace(config, student_init="random")
    plain = _parse(_recipes(random_start).student_training([standard], 10_000), random_start, tmp_path)
    assert plain.pipeline.init_from is None


def test_teacher_terms_choose_what_the_student_learns_from_the_teachers(tmp_path):
    config = load_preset("demo", RunConfig(preset="demo", data=tmp_path, output_dir=tmp_path / "out"))
    assert config.teacher_terms == "none" and config.variants == ("standard",)  # the demo preset's (issue 10)
    standard = tmp_path / "teacher" / "config.yml"
    plain = _parse(_recipes(config).student_training([standard], 10_000), config, tmp_path).pipeline
    assert (plain.model.kd_weight, plain.model.kd_weight_final, plain.model.structure_weight) == (0, 0, 0)
    assert plain.pseudo_view_rate == 0 and plain.init_from is not None and plain.model.sparsity_weight == 0.03
    assert plain.model.prune_score == "top-contributions"  # the demo preset's cut ranking (issue 10)
    paper_ranking = dataclasses.replace(config, student_prune_score="blending-weight")
    ranked = _parse(_recipes(paper_ranking).student_training([standard], 10_000), config, tmp_path)
    assert ranked.pipeline.model.prune_score == "blending-weight"
    distilled = dataclasses.replace(config, teacher_terms="paper")
    paper = _parse(_recipes(distilled).student_training([standard], 10_000), distilled, tmp_path)
    assert paper.pipeline.model.kd_weight == 0.4 and paper.pipeline.model.structure_weight == 1.0
    assert paper.pipeline.pseudo_view_rate == 0
    novel = dataclasses.replace(config, teacher_terms="novel-views")
    views = _parse(_recipes(novel).student_training([standard], 10_000), novel, tmp_path).pipeline
    assert (views.model.kd_weight, views.model.kd_weight_final, views.model.structure_weight) == (0, 0, 0)
    assert views.pseudo_view_rate == 0.25 and views.pseudo_view_mode == "interpolate"


def test_baseline_no_kd_is_the_student_itself_when_it_has_no_teacher_terms_and_its_own_start(tmp_path, monkeypatch):
    trained_stages: list[str] = []

    def fake_train(self, trainings, data, gpus):
        trained_stages.extend(t.stage for t in trainings)
        return {t.stage: {"stage": t.stage, "config": str(tmp_path / t.stage / "config.yml")} for t in trainings}

    evaluated: dict[str, dict] = {}
    monkeypatch.setattr(Run, "check_data", lambda self, data: None)
    monkeypatch.setattr(Run, "train_stages", fake_train)
    monkeypatch.setattr(Evaluator, "stage_eval", lambda self, name, record, student: evaluated.setdefault(name, record))
    monkeypatch.setattr(recipe_module, "gaussian_count", lambda record: 1000)
    monkeypatch.setattr(StudentResult, "of", staticmethod(lambda record, steps: StudentResult(148, 0.3, True)))
    monkeypatch.setattr("distilled3dgs_ns.report.write_report", lambda *args, **kwargs: tmp_path / "report.md")
    for terms, start in itertools.product(("none", "paper", "novel-views"), ("random", "teacher")):
        trained_stages.clear()
        evaluated.clear()
        config = parse_config(["--preset", "demo", "--data", str(tmp_path), "--output-dir",
                               str(tmp_path / f"{terms}-{start}"), "--baselines", "--teacher-terms", terms,
                               "--student-init", start])  # fmt: skip
        Run(config, log=lambda _: None)()
        itself = terms == "none" and start == "random"
        assert ("baseline-no-kd" in trained_stages) == (not itself)
        assert evaluated["baseline-no-kd"]["stage"] == ("student" if itself else "baseline-no-kd")
        assert {"baseline-pruned-teacher", "baseline-capped"} <= set(trained_stages)


def test_baselines_train_at_the_students_count_with_its_steps(tmp_path):
    config = load_preset("demo", RunConfig(preset="demo", data=tmp_path, output_dir=tmp_path / "out"))
    run = Run(config, log=lambda _: None)
    standard = tmp_path / "teacher" / "config.yml"
    trainings = {t.stage: t for t in run.recipes.baseline_trainings(standard, 10_000, StudentResult(1234, 0.3, True))}
    assert set(trainings) == set(BASELINES)
    assert {t.steps for t in trainings.values()} == {config.student_steps}
    no_kd = _parse(trainings["baseline-no-kd"], config, tmp_path).pipeline
    assert no_kd.teachers == [] and no_kd.pseudo_view_rate == 0 and no_kd.init_from is None
    assert (no_kd.model.kd_weight, no_kd.model.structure_weight) == (0, 0)
    # from its own points it densifies before cutting to the student's count: the cuts of --no-kd-budget-at/-until
    cuts = (no_kd.model.prune_count_at, no_kd.model.prune_count_until)
    assert no_kd.model.prune_count == 1234 and cuts == (config.no_kd_budget_at, config.no_kd_budget_until)
    assert no_kd.model.sh_degree_interval == to_step(config.schedule.sh_degree_every, config.student_steps) > 1
    student = _parse(run.recipes.student_training([standard], 10_000), config, tmp_path).pipeline.model
    assert no_kd.model.prune_sample_at == student.prune_sample_at  # otherwise the student's own recipe
    assert no_kd.model.sparsity_weight == student.sparsity_weight and no_kd.model.prune_score == student.prune_score
    assert student.prune_count_until == config.student_budget_until != config.no_kd_budget_until
    own_start = dataclasses.replace(config, student_init="random", student_budget_at=0.2, student_budget_until=0.6)
    own_no_kd = _recipes(own_start).baseline_trainings(standard, 10_000, StudentResult(1234, 0.6, True))
    own = _parse(own_no_kd[0], own_start, tmp_path)
    assert (own.pipeline.model.prune_count_at, own.pipeline.model.prune_count_until) == (0.2, 0.6)
    no_cut = _recipes(own_start).baseline_trainings(standard, 10_000, StudentResult(1234, 0.25, False))
    assert _parse(no_cut[0], own_start, tmp_path).pipeline.model.prune_count_at == 0.25  # where its last prune was
    pruned = _parse(trainings["baseline-pruned-teacher"], config, tmp_path).pipeline
    assert pruned.init_from == standard and pruned.teachers == []
    assert (pruned.model.prune_count_at, pruned.model.prune_count, pruned.model.prune_score) == (
        0.0,
        1234,
        "global-significance",
    )
    assert pruned.model.prune_sample_at is None and pruned.model.prune_mass_at is None
    capped = _parse(trainings["baseline-capped"], config, tmp_path)
    assert capped.method_name == "distilled3dgs-teacher" and capped.pipeline.model.variant == "standard"
    assert capped.pipeline.model.max_gaussians == 1234


def test_a_bad_option_fails_before_any_training(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(launch_module, "run_training", lambda *args, **kwargs: started.append(args))
    monkeypatch.setattr(Run, "check_data", lambda self, data: None)
    for args in (["--student-args=--pipeline.model.kd-wieght 0.5"], ["--teacher-args=--pipeline.model.variant x"]):
        config = parse_config(["--data", str(tmp_path), "--output-dir", str(tmp_path / "out"), *args])
        with pytest.raises(RunSetupError, match="ns-train would refuse its options .*nothing was trained"):
            Run(config, log=lambda _: None)()
    config = parse_config(["--data", str(tmp_path), "--output-dir", str(tmp_path / "b"), "--baselines"])
    Run(config, log=lambda _: None).check_all_options(tmp_path)  # the baselines' commands parse too
    assert not started


class FakeNsTrain:
    """Stands in for an ns-train that writes a checkpoint at step 49, then crashes (exit 1)."""

    commands: list[list[str]] = []

    def __init__(self, command: list[str], **_: object) -> None:
        FakeNsTrain.commands.append(command)
        output = Path(command[command.index("--output-dir") + 1])
        stage = command[command.index("--experiment-name") + 1]
        models = output / stage / command[1] / "run" / "nerfstudio_models"
        models.mkdir(parents=True, exist_ok=True)
        (models / "step-000000049.ckpt").write_text("checkpoint")
        self.stdout = iter(["49 (25.0%)\n"])

    def wait(self) -> int:
        return 1


def interrupted_teacher(tmp_path: Path, monkeypatch, save_every: int = 50) -> tuple[Training, Path]:
    """A teacher training interrupted after its step-49 checkpoint, as a crash or Ctrl-C leaves it."""
    FakeNsTrain.commands = []
    monkeypatch.setattr(launch_module.subprocess, "Popen", FakeNsTrain)
    runs = tmp_path / "out" / "runs"
    training = Training(stage="teacher-standard", method="distilled3dgs-teacher", steps=200, options=["--x", "1"])
    config = RunConfig(data=tmp_path, device_type="cpu", save_every=save_every)
    with pytest.raises(run_module.StageFailed):
        launch_module.run_training(training, config, tmp_path, runs, {}, lambda step: None)
    return training, runs


def resume_again(training: Training, config: RunConfig, data: Path, runs: Path) -> list[str]:
    """Re-run the training (the fake crashes again); the command it started."""
    steps: list[int] = []
    with pytest.raises(run_module.StageFailed):
        launch_module.run_training(training, config, data, runs, {}, steps.append)
    assert steps == [49]  # ns-train counts from the loaded step: the progress bar must not add it again
    return FakeNsTrain.commands[-1]


def test_changing_save_every_resumes_an_interrupted_training(tmp_path, monkeypatch):
    training, runs = interrupted_teacher(tmp_path, monkeypatch, save_every=50)
    command = resume_again(training, RunConfig(data=tmp_path, device_type="cpu", save_every=100), tmp_path, runs)
    assert "--load-dir" in command and command[command.index("--max-num-iterations") + 1] == "150"
    assert training.latest_checkpoint_step(runs) == 49


def test_an_interrupted_training_with_other_settings_is_refused_not_deleted(tmp_path, monkeypatch):
    training, runs = interrupted_teacher(tmp_path, monkeypatch)
    changed = Training(stage=training.stage, method=training.method, steps=200, options=["--x", "2"])
    with pytest.raises(RunSetupError, match="interrupted at step 49 .*--redo teacher-standard"):
        launch_module.run_training(changed, RunConfig(data=tmp_path, device_type="cpu"), tmp_path, runs, {}, print)
    assert training.latest_checkpoint_step(runs) == 49 and len(FakeNsTrain.commands) == 1

    run = Run(RunConfig(data=tmp_path, output_dir=tmp_path / "out"), log=lambda _: None)
    run.forget(["teacher-standard"])  # --redo: now it trains afresh
    assert training.latest_checkpoint_step(runs) is None
    assert not (runs / "teacher-standard.attempts.json").exists()
    with pytest.raises(RunSetupError, match="--redo tacher-standard: no such stage"):
        run.forget(["tacher-standard"])


def test_a_moved_run_folder_resumes_its_interrupted_training(tmp_path, monkeypatch):
    training, runs = interrupted_teacher(tmp_path, monkeypatch)
    (tmp_path / "out").rename(tmp_path / "moved")
    moved = tmp_path / "moved" / "runs"
    command = resume_again(training, RunConfig(data=tmp_path, device_type="cpu"), tmp_path, moved)
    assert command[command.index("--load-dir") + 1] == str(training.folder(moved) / "nerfstudio_models")
    attempts = json.loads((moved / "teacher-standard.attempts.json").read_text())
    assert len(attempts["seconds"]) == 2  # both attempts count towards the training time


def test_a_moved_run_finished_by_an_older_version_keeps_its_stages(tmp_path, monkeypatch):
    """Older versions fingerprinted the whole command, absolute paths included: moved, such a run must not be
    refused stage by stage."""
    old = tmp_path / "old"
    data = old / "scene"  # the embedded scene lives in the run folder and moves with it
    config = RunConfig(data=data, output_dir=old, device_type="cpu")
    training = Training(stage="teacher-standard", method="distilled3dgs-teacher", steps=20, options=["--x", "1"])
    old_key = fingerprint({"command": run_module.ns_train_command(training, config, data, old / "runs", None)})
    config_path = training.folder(old / "runs") / "config.yml"
    StageBook(old / "stages").finish(training.stage, old_key, config=str(config_path), train_s=3.0)
    old.rename(tmp_path / "moved")

    moved = tmp_path / "moved"
    monkeypatch.setattr(launch_module, "run_training", lambda *a, **k: pytest.fail("a finished stage trained again"))
    run = Run(dataclasses.replace(config, data=moved / "scene", output_dir=moved), log=lambda _: None)
    records = run.train_stages([training], moved / "scene", [])
    assert records["teacher-standard"]["config"] == str(training.folder(moved / "runs") / "config.yml")
    changed = Training(stage=training.stage, method=training.method, steps=20, options=["--x", "2"])
    with pytest.raises(RunSetupError, match="finished with other settings"):  # other settings are still refused
        run.train_stages([changed], moved / "scene", [])


# --------------------------------------------------------------------------------------------------- input checks


def test_bad_data_fails_before_training_with_what_to_do(tmp_path):
    missing = Run(RunConfig(data=tmp_path / "nowhere", output_dir=tmp_path / "out"), log=lambda _: None)
    with pytest.raises(RunSetupError, match="does not exist"):
        missing.check_data(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    run = Run(RunConfig(data=empty, output_dir=tmp_path / "out"), log=lambda _: None)
    with pytest.raises(RunSetupError, match="could not be read with the 'blender-data' dataparser"):
        run.check_data(empty)
    wrong_parser = Run(RunConfig(data=empty, dataparser="no-such-parser"), log=lambda _: None)
    with pytest.raises(RunSetupError, match="unknown --dataparser 'no-such-parser'"):
        wrong_parser.check_data(empty)
    with pytest.raises(RunSetupError, match="pass --data"):
        Run(RunConfig(), log=lambda _: None).scene_path()


def test_bad_options_are_refused():
    with pytest.raises(RunSetupError, match="GPU numbers"):
        RunConfig(devices="0,x").gpu_ids()
    with pytest.raises(RunSetupError, match="twice"):
        RunConfig(variants=("standard", "standard"))
    with pytest.raises(RunSetupError, match="positive"):
        RunConfig(teacher_steps=0)


def test_teachers_train_in_parallel_one_process_per_gpu(tmp_path, monkeypatch):
    """With --devices 0,1 two trainings run at once, each seeing only its own GPU."""
    active, peak, seen = [0], [0], []
    lock = threading.Lock()

    def fake_training(training, config, data, runs, env, on_step, keys=None):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            seen.append(env["CUDA_VISIBLE_DEVICES"])
        time.sleep(0.3)
        on_step(training.steps - 1)
        with lock:
            active[0] -= 1
        return {"resumed_from": None, "train_s": 0.3, "attempts": 1}

    monkeypatch.setattr(launch_module, "run_training", fake_training)
    config = RunConfig(data=tmp_path, output_dir=tmp_path / "out", device_type="cuda", devices="0,1")
    run = Run(config, log=lambda _: None)
    records = run.train_stages(run.recipes.teacher_trainings(), tmp_path, config.gpu_ids())
    assert set(records) == {"teacher-standard", "teacher-perturbed", "teacher-dropout"}
    assert peak[0] == 2
    assert sorted(set(seen)) == ["0", "1"]
    # finished stages are skipped on the next call: no training runs
    monkeypatch.setattr(launch_module, "run_training", lambda *a, **k: pytest.fail("a finished stage ran again"))
    assert set(run.train_stages(run.recipes.teacher_trainings(), tmp_path, config.gpu_ids())) == set(records)


# --------------------------------------------------------------------------------------------------- end to end

TINY = [
    "--preset", "demo",
    "--variants", "standard", "dropout",
    "--teacher-steps", "40",
    "--student-steps", "40",
    "--save-every", "20",
    "--strip-views", "2",
    "--eval-views", "2",
    "--render-repeats", "1",
    "--compact-finetune-steps", "5",
    "--scene.image-size", "48",
    "--scene.n-train", "8",
    "--scene.n-val", "2",
    "--scene.n-test", "2",
    "--student-args=--pipeline.teacher-min-psnr 0",
]  # fmt: skip


def run_command(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "DISTILLED3DGS_NO_LPIPS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "distilled3dgs_ns.run", *args], cwd=cwd, capture_output=True, text=True, env=env
    )


@pytest.mark.slow
def test_demo_runs_end_to_end_then_skips_every_finished_stage(tmp_path):
    out = tmp_path / "out"
    first = run_command([*TINY, "--output-dir", str(out)], REPO_ROOT)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert f"Report: {out / 'report.md'}" in first.stdout
    report = json.loads((out / "report.json").read_text())
    files = {
        "student-compact",
        "student-spz",
        "student-sog",
        "student-glb-spz",
        "student-compressed-ply",
        "student-splat",
    }
    assert set(report["models"]) == {"teacher-standard", "teacher-dropout", "student"} | files
    for figures in report["models"].values():
        assert set(figures) >= {"psnr", "ssim", "lpips", "num_gaussians", "size_mb", "render_ms", "train_s"}
        assert figures["psnr"] > 5 and figures["num_gaussians"] > 0 and figures["size_mb"] > 0
    models = report["models"]
    assert models["student-compact"]["size_mb"] < models["student"]["size_mb"]
    assert models["student-spz"]["size_mb"] < models["student"]["size_mb"]
    student_models = out / "runs" / "student" / "distilled3dgs-student" / "run" / "nerfstudio_models"
    student_state = gaussian_state(read_checkpoint(newest_checkpoint(student_models))["pipeline"])
    visible = int(visible_mask(student_state).sum())  # the files drop what cannot show (opacity < 1/255)
    assert visible > 0.9 * models["student"]["num_gaussians"]
    for name in files:  # each file decoded and held to the student's own renders
        assert Path(models[name]["file"]).is_file()
        assert models[name]["num_gaussians"] == visible
        assert 20 < models[name]["psnr_vs_model"] < 100
    assert "student-spz: `student.spz`" in (out / "report.md").read_text()
    assert (out / "psnr_vs_gaussians.png").stat().st_size > 0 and (out / "views_strip.png").stat().st_size > 0
    assert "| student |" in (out / "report.md").read_text()
    page = (out / "report.html").read_text()  # the same report as a page, with the student in 3-D
    assert "<table>" in page and "createViewer" in page and "teacher-standard" in page

    # distilled3dgs-eval evaluates the compact file directly, and agrees with the report
    student_config = out / "runs" / "student" / "distilled3dgs-student" / "run" / "config.yml"
    figures_path, compact = tmp_path / "compact_eval.json", out / "export" / "student.spz"
    evaluated = subprocess.run(
        ["distilled3dgs-eval", "--load-config", str(student_config), "--compact", str(compact),
         "--output-path", str(figures_path), "--render-repeats", "0"],
        capture_output=True, text=True, env={**os.environ, "DISTILLED3DGS_NO_LPIPS": "1"},
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    figures = json.loads(figures_path.read_text())
    assert figures["psnr"] == pytest.approx(models["student-spz"]["psnr"], abs=1e-4)
    assert figures["num_gaussians"] == models["student-spz"]["num_gaussians"]
    assert figures["size_mb"] == pytest.approx(models["student-spz"]["size_mb"])

    logs = {p.name: p.stat().st_mtime for p in (out / "runs").glob("*.log")}
    second = run_command([*TINY, "--output-dir", str(out)], REPO_ROOT)
    assert second.returncode == 0, second.stderr[-3000:]
    for stage in ("scene", "teacher-standard", "teacher-dropout", "student", "eval-student"):
        assert f"{stage}: finished earlier" in second.stdout
    assert {p.name: p.stat().st_mtime for p in (out / "runs").glob("*.log")} == logs  # no ns-train started

    changed = run_command([*TINY, "--output-dir", str(out), "--student-steps", "50"], REPO_ROOT)
    assert changed.returncode == 2 and "--redo student" in changed.stderr  # other settings: refused, not mixed


@pytest.mark.slow
def test_a_crash_loses_only_the_stage_in_progress(tmp_path):
    """Kill the run while the student trains; the re-run keeps the teachers and resumes the student."""
    out = tmp_path / "out"
    args = [*TINY, "--variants", "standard", "--student-steps", "200", "--output-dir", str(out)]
    env = {**os.environ, "DISTILLED3DGS_NO_LPIPS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "distilled3dgs_ns.run", *args],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    checkpoints = out / "runs" / "student" / "distilled3dgs-student" / "run" / "nerfstudio_models"
    deadline = time.time() + 600
    while not list(checkpoints.glob("step-*.ckpt")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)  # the whole process group: the run and its ns-train
    process.wait()
    assert list(checkpoints.glob("step-*.ckpt")), "the student never wrote a checkpoint"
    assert (out / "stages" / "teacher-standard.json").exists()
    assert not (out / "stages" / "student.json").exists()
    teacher_log = (out / "runs" / "teacher-standard.log").stat().st_mtime

    again = run_command(args, REPO_ROOT)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "teacher-standard: finished earlier" in again.stdout
    assert (out / "runs" / "teacher-standard.log").stat().st_mtime == teacher_log
    student = json.loads((out / "stages" / "student.json").read_text())
    assert student["resumed_from"] is not None and student["resumed_from"] >= 19
    assert student["attempts"] == 2


@pytest.mark.slow
def test_bad_data_on_the_command_line_is_one_clear_line(tmp_path):
    result = run_command(["--data", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "out")], REPO_ROOT)
    assert result.returncode == 2
    assert "distilled3dgs-run: --data" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_diverged_training_fails_its_stage_with_ns_trains_one_line(tmp_path, monkeypatch):
    class Diverging(FakeNsTrain):
        def __init__(self, command: list[str], **kwargs: object) -> None:
            super().__init__(command, **kwargs)
            self.stdout = iter(
                ["12 (6.0%)\n", "ns-train: step 12: training diverged, non-finite Gaussians (9 of 90 means)\n"]
            )

    monkeypatch.setattr(launch_module.subprocess, "Popen", Diverging)
    training = Training(stage="teacher-standard", method="distilled3dgs-teacher", steps=200, options=[])
    with pytest.raises(run_module.StageFailed, match=r"^teacher-standard: step 12: training diverged.*--redo teacher"):
        launch_module.run_training(training, RunConfig(data=tmp_path), tmp_path, tmp_path / "runs", {}, print)


def test_a_failed_teacher_check_names_the_run_options_that_fix_it(tmp_path, monkeypatch):
    """Redoing the student alone fails again: the fix is longer teachers (or a lower check), in this command's terms."""
    from distilled3dgs_ns.errors import TEACHER_CHECK_OPTION

    check = [  # as ns-train prints the teacher check's TeacherLoadError
        "ns-train: teacher runs/teacher-standard/config.yml: renders 8 of the student's training views at 9.1 dB PSNR "
        "against their ground truth (need >= 18 dB): it was trained on another scene (or barely trained)\n",
        f"  fix: pass teachers trained on the student's --data, or lower {TEACHER_CHECK_OPTION}\n",
    ]

    class Refusing(FakeNsTrain):
        def __init__(self, command: list[str], **kwargs: object) -> None:
            super().__init__(command, **kwargs)
            self.stdout = iter(check)

    monkeypatch.setattr(launch_module.subprocess, "Popen", Refusing)
    config = RunConfig(data=tmp_path, variants=("standard", "dropout"), teacher_steps=40)
    training = Training(stage="student", method="distilled3dgs-student", steps=200, options=[])
    with pytest.raises(run_module.StageFailed) as error:
        launch_module.run_training(training, config, tmp_path, tmp_path / "runs", {}, print)
    message = str(error.value)
    assert message.startswith("student: teacher runs/teacher-standard/config.yml: renders 8") and "9.1 dB" in message
    assert "fix: pass teachers trained on the student's --data" in message  # ns-train's own advice, kept
    assert "--teacher-steps" in message and "more than 40" in message
    assert "--redo teacher-standard teacher-dropout" in message
    assert f'--student-args="{TEACHER_CHECK_OPTION} ' in message and "--redo student" not in message


def test_the_run_evaluates_on_its_own_device(tmp_path, monkeypatch):
    """--device-type cpu on a machine with CUDA trained on the CPU but evaluated on CUDA (the report said cpu)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    asked: dict[str, str | None] = {}

    class Loaded(Exception):
        pass

    def load(config, data=None, test_mode="test", device=None):
        asked["device"] = device
        raise Loaded

    monkeypatch.setattr(evaluate_module, "load_pipeline", load)
    run = Run(RunConfig(data=tmp_path, output_dir=tmp_path / "out", device_type="cpu"), log=lambda _: None)
    with pytest.raises(Loaded):
        run.evaluator.stage_eval(
            "teacher-standard", {"fingerprint": "f", "config": str(tmp_path / "config.yml")}, student=False
        )
    assert asked["device"] == "cpu"


def test_a_random_start_cut_before_it_grew_is_warned_of(tmp_path):
    def config(*options: str) -> RunConfig:
        return parse_config(["--preset", "demo", "--data", str(tmp_path), "--output-dir", str(tmp_path), *options])

    warning = config("--student-init", "random").early_cut_warning()
    assert warning is not None and "from 5% of the run" in warning
    assert "--student-budget-at 0.3 --student-budget-until 0.6" in warning
    assert config().early_cut_warning() is None  # the teacher's start is grown already
    assert config("--student-init", "random", "--student-budget-at", "0.3").early_cut_warning() is None
