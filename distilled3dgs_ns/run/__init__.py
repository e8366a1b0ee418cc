"""``distilled3dgs-run``: teachers, student, evaluation, export and report in one resumable command.

Stages, in order (each one's record in ``<output-dir>/stages/`` marks it finished; ``Run.stages`` is the one list
the run executes, ``--redo`` follows and the up-front option check builds)::

    scene (embedded scene only) -> teacher-<variant> ... -> student [-> baseline-* (--baselines)]
        -> eval-<model> ... -> report

The baselines train at the student's final Gaussian count with its step count, so the report says whether
distillation beats the obvious same-budget alternatives: the student's recipe without any teacher, from the model's
own points (``baseline-no-kd``), the standard teacher pruned by global significance then fine-tuned
(``baseline-pruned-teacher``, LightGaussian's prune and co-adaptation) and a splatfacto trained from scratch with a
capped count (``baseline-capped``).

Training stages are ``ns-train`` subprocesses, so a crash (or Ctrl-C) in one loses at most the steps since its last
checkpoint: re-running the same command skips finished stages, says so, and resumes an unfinished training from its
latest checkpoint. With several GPUs (``--devices 0,1,2``) the teachers train in parallel, one process per GPU.
Evaluation runs in this process: test-split metrics, render time, PLY export and, for the student, the compact file.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tyro

from distilled3dgs_ns.errors import one_line_errors
from distilled3dgs_ns.names import TEACHER_METHOD
from distilled3dgs_ns.presets import available_presets, load_preset
from distilled3dgs_ns.run import launch
from distilled3dgs_ns.run import recipes as recipe_module
from distilled3dgs_ns.run.config import (
    BASELINES,
    TIMESTAMP,
    RunConfig,
    SplatfactoSchedule,
    device_type_of,
)
from distilled3dgs_ns.run.evaluate import Evaluator
from distilled3dgs_ns.run.launch import StageFailed, check_options, ns_train_command
from distilled3dgs_ns.run.recipes import Known, Recipes, StudentResult, Training
from distilled3dgs_ns.stages import RunSetupError, StageBook, fingerprint

__all__ = [
    "BASELINES",
    "Run",
    "RunConfig",
    "SplatfactoSchedule",
    "Stage",
    "StageFailed",
    "StudentResult",
    "Training",
    "check_options",
    "entrypoint",
    "main",
    "ns_train_command",
    "parse_config",
]
"""The run's public names (the package's modules hold the rest)."""


@dataclass
class Run:
    """The stages of one ``RunConfig`` in one output folder."""

    config: RunConfig
    log: Callable[[str], None] = print

    def __post_init__(self) -> None:
        self.output_dir = self.config.output_dir.resolve()
        self.runs = self.output_dir / "runs"
        self.book = StageBook(self.output_dir / "stages")
        self.data_has_depth = False

    @property
    def recipes(self) -> Recipes:
        """The command lines of this run's trainings (after ``check_data``, which finds whether it has depth maps)."""
        return Recipes(self.config, self.runs, self.data_has_depth)

    @property
    def evaluator(self) -> Evaluator:
        return Evaluator(self.config, self.output_dir, self.book, self.scene_path(), self.log)

    def prepare_output_dir(self) -> None:
        """Create the output folder, or say in one line why it cannot be used."""
        where = f"--output-dir {self.output_dir}"
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise RunSetupError(f"{where} is a file; pass a folder (it is created if missing)")
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunSetupError(
                f"{where} cannot be created ({error.strerror}); choose a folder you can write to"
            ) from None
        if not os.access(self.output_dir, os.W_OK | os.X_OK):
            raise RunSetupError(f"{where} is not writable; choose a folder you can write to")

    def scene_path(self) -> Path:
        if self.config.data is not None:
            return self.config.data.resolve()
        if self.config.embedded_scene:
            return self.output_dir / "scene"
        raise RunSetupError(
            "no scene: pass --data <scene folder> (any nerfstudio dataparser format), or --preset demo to run on the "
            "generated embedded scene"
        )

    def check_data(self, data: Path) -> None:
        """Parse the scene with the chosen dataparser now, so a bad --data fails before any training."""
        if not data.exists():
            raise RunSetupError(f"--data {data} does not exist; pass the folder of your scene")
        from nerfstudio.configs.dataparser_configs import all_dataparsers

        if self.config.dataparser not in all_dataparsers:
            raise RunSetupError(
                f"unknown --dataparser '{self.config.dataparser}'; choose one of {', '.join(sorted(all_dataparsers))}"
            )
        parser_config = tyro.cli(
            type(all_dataparsers[self.config.dataparser]),
            default=all_dataparsers[self.config.dataparser],
            args=shlex.split(self.config.dataparser_args),
        )
        parser_config.data = data
        try:
            outputs = parser_config.setup().get_dataparser_outputs(split="train")
        except Exception as error:  # any parser failure means the same to the user: this folder can't be read
            raise RunSetupError(
                f"--data {data} could not be read with the '{self.config.dataparser}' dataparser "
                f"({type(error).__name__}: {error}). Check the folder and --dataparser (nerfstudio-data, colmap, "
                "blender-data, ...); ns-process-data turns images or video into a nerfstudio-data scene."
            ) from error
        if len(outputs.image_filenames) == 0:
            raise RunSetupError(f"--data {data} has no training images for the '{self.config.dataparser}' dataparser")
        self.data_has_depth = bool(outputs.metadata.get("depth_filenames"))
        if self.config.depth in ("relative", "metric") and not self.data_has_depth:
            raise RunSetupError(
                f"--depth {self.config.depth}: the '{self.config.dataparser}' dataparser found no depth maps in "
                f"{data}; give every frame of transforms.json a depth_file_path (nerfstudio-data; colmap: "
                '--dataparser-args="--depths-path DIR"), or leave --depth off'
            )

    def stages(self) -> list[Stage]:
        """Every stage of the run in the order it runs, each with the stages it consumes and how it runs."""
        cfg = self.config
        teachers = self.recipes.teacher_stages()
        teacher_configs = [self.runs / name / TEACHER_METHOD / TIMESTAMP / "config.yml" for name in teachers]
        stages = [
            Stage("scene", (), run=lambda done: None if cfg.data is not None else self.stage_scene(self.scene_path()))
        ]
        stages += [Stage(t.stage, ("scene",), training=lambda known, t=t: t) for t in self.recipes.teacher_trainings()]
        stages.append(
            Stage(
                "student",
                ("scene", *teachers),
                training=lambda known: self.recipes.student_training(teacher_configs, known.need_teacher_count()),
            )
        )
        for name in BASELINES if cfg.baselines else ():
            inputs = ("scene", "student", self.recipes.standard_stage())
            if name == "baseline-no-kd" and cfg.student_is_no_kd:
                stages.append(Stage(name, inputs, run=lambda done: done["student"]))
                continue

            def baseline(known: Known, name: str = name) -> Training:
                trainings = self.recipes.baseline_trainings(
                    self.recipes.standard_config(), known.need_teacher_count(), known.need_student()
                )
                return next(training for training in trainings if training.stage == name)

            stages.append(Stage(name, inputs, training=baseline))
        models = self.model_stages()
        for name in models:
            stages.append(
                Stage(
                    f"eval-{name}",
                    (name,),
                    run=lambda done, n=name: self.evaluator.stage_eval(n, done[n], student=n == "student"),
                )
            )
        stages.append(Stage("report", tuple(f"eval-{name}" for name in models), run=self.stage_report))
        return stages

    def model_stages(self) -> list[str]:
        """The trainings that are evaluated and reported, in report order."""
        return [*self.recipes.teacher_stages(), "student", *(BASELINES if self.config.baselines else ())]

    def stage_inputs(self) -> dict[str, list[str]]:
        """Every stage and the stages whose results it consumes (from ``stages``)."""
        return {stage.name: list(stage.inputs) for stage in self.stages()}

    @staticmethod
    def dependents(stages: dict[str, list[str]]) -> dict[str, list[str]]:
        """Stage -> stages that consume its result (for --redo), from ``stage_inputs``."""
        graph: dict[str, list[str]] = {}
        for stage, inputs in stages.items():
            for name in inputs:
                graph.setdefault(name, []).append(stage)
        return graph

    def forget(self, names: Sequence[str]) -> None:
        """--redo: drop the records of ``names`` and their dependents, and the trainings' folders, so they run anew."""
        stages = self.stage_inputs()
        graph = self.dependents(stages)
        unknown = sorted(set(names) - set(stages))
        if unknown:
            raise RunSetupError(f"--redo {' '.join(unknown)}: no such stage; this run's stages are {', '.join(stages)}")
        pending, seen = list(names), set()
        while pending:
            name = pending.pop()
            if name in seen:
                continue
            seen.add(name)
            forgotten = self.book.forget(name)
            attempts = self.runs / f"{name}.attempts.json"
            if attempts.exists() or (self.runs / name).exists():
                shutil.rmtree(self.runs / name, ignore_errors=True)
                attempts.unlink(missing_ok=True)
                forgotten = True
            if forgotten:
                self.log(f"--redo: stage '{name}' will run again")
            pending += graph.get(name, [])

    def planned_trainings(self, teacher_count: int, student_count: int) -> list[Training]:
        """Every training of the run before any has run, at stand-in counts for the teacher's and the student's
        results (the student's with its schedule: its count cut, or the paper's last prune)."""
        has_cut = self.config.student_budget_share is not None
        known = Known(teacher_count, StudentResult(student_count, self.config.student_budget_until, has_cut))
        return [stage.training(known) for stage in self.stages() if stage.training is not None]

    def check_all_options(self, data: Path) -> None:
        """Every training's command line parses (with stand-in counts) before anything trains."""
        for training in self.planned_trainings(teacher_count=1, student_count=1):
            launch.check_options(training, self.config, data, self.runs)

    def stage_scene(self, data: Path) -> None:
        from distilled3dgs_ns.scenes import write_embedded_scene

        key = fingerprint(asdict(self.config.scene))
        if self.book.check("scene", key):
            self.log(f"scene: finished earlier, skipping ({data})")
            return
        self.log(f"scene: writing the embedded scene to {data}")
        start = time.perf_counter()
        write_embedded_scene(data, self.config.scene, show_progress=True)
        self.book.finish("scene", key, seconds=time.perf_counter() - start, path=str(data))

    def train_stages(self, trainings: list[Training], data: Path, gpus: list[str]) -> dict[str, dict[str, Any]]:
        """Train what is not finished yet (in parallel over ``gpus`` when there are several); returns the records."""
        records: dict[str, dict[str, Any]] = {}
        todo: list[tuple[Training, tuple[str, str]]] = []
        for training in trainings:
            keys = launch.training_keys(training, self.config, data, self.runs, self.book.get(training.stage))
            record = self.book.check(training.stage, keys[0], also=keys[1])
            if record is not None:
                self.log(f"{training.stage}: finished earlier ({record['train_s']:.0f} s), skipping")
                records[training.stage] = {**record, "config": str(training.folder(self.runs) / "config.yml")}
            else:
                todo.append((training, keys))
        if not todo:
            return records
        from distilled3dgs_ns.progress import progress_display

        lock = threading.Lock()
        workers = len(gpus) if gpus else min(self.config.jobs, len(todo))
        free: list[str | None] = list(gpus) if gpus else [None] * workers
        with progress_display(transient=False) as progress:
            tasks = {
                t.stage: progress.add_task(f"{t.stage} ({t.steps} steps)", total=t.steps, status="") for t, _ in todo
            }

            def train(item: tuple[Training, tuple[str, str]]) -> dict[str, Any]:
                training, keys = item
                with lock:
                    gpu = free.pop(0)
                try:
                    where = f" on GPU {gpu}" if gpu is not None else ""
                    progress.console.log(f"{training.stage}: training{where}, log {self.runs / training.stage}.log")
                    figures = launch.run_training(
                        training,
                        self.config,
                        data,
                        self.runs,
                        launch.environment(self.config, gpu, workers),
                        lambda step: progress.update(tasks[training.stage], completed=min(step + 1, training.steps)),
                        keys,
                    )
                    progress.update(tasks[training.stage], completed=training.steps)
                finally:
                    with lock:
                        free.append(gpu)
                config_path = training.folder(self.runs) / "config.yml"
                return self.book.finish(training.stage, keys[0], config=str(config_path), **figures)

            with ThreadPoolExecutor(max_workers=workers) as pool:
                for record in pool.map(train, todo):
                    records[record["stage"]] = record
        return records

    def stage_report(self, done: dict[str, Any]) -> Path:
        from distilled3dgs_ns.report import write_report

        evaluations = {name: done[f"eval-{name}"] for name in self.model_stages()}
        return write_report(self.output_dir, self.config, evaluations, device=device_type_of(self.config))

    def known(self, done: dict[str, Any]) -> Known:
        """What the finished stages in ``done`` tell the later command lines."""
        standard, student = done.get(self.recipes.standard_stage()), done.get("student")
        return Known(
            None if standard is None else recipe_module.gaussian_count(standard),
            None
            if student is None or not self.config.baselines
            else recipe_module.StudentResult.of(student, self.config.student_steps),
        )

    def execute(self, stages: list[Stage], data: Path, gpus: list[str]) -> dict[str, Any]:
        """Run ``stages`` in order, consecutive trainings that do not consume each other together (in parallel over
        the GPUs or ``--jobs``); returns every stage's result."""
        done: dict[str, Any] = {}
        batch: list[Stage] = []

        def train_batch() -> None:
            known = self.known(done)
            done.update(self.train_stages([stage.training(known) for stage in batch], data, gpus))
            batch.clear()

        for stage in stages:
            if batch and (stage.training is None or set(stage.inputs) & {b.name for b in batch}):
                train_batch()
            if stage.training is not None:
                batch.append(stage)
            else:
                done[stage.name] = stage.run(done)
        if batch:
            train_batch()
        return done

    def __call__(self) -> Path:
        cfg = self.config
        self.prepare_output_dir()
        self.forget(cfg.redo)
        data = self.scene_path()
        scene, *stages = self.stages()
        scene.run({})  # first: the checks below read the scene
        self.check_data(data)
        gpus = cfg.gpu_ids()
        if gpus and device_type_of(cfg) != "cuda":
            raise RunSetupError("--devices needs CUDA (--device-type cuda or auto on a machine with GPUs)")
        if cfg.threads is not None:
            import torch

            torch.set_num_threads(cfg.threads)
        self.check_all_options(data)
        if warning := cfg.early_cut_warning():
            self.log(f"Warning: {warning}")
        return self.execute(stages, data, gpus)["report"]


@dataclass(frozen=True)
class Stage:
    """One stage of a run: its name, the stages whose results it consumes, and either the training it is (built from
    what the finished stages found, ``Known``) or what it runs in this process (given the finished stages' results)."""

    name: str
    inputs: tuple[str, ...]
    training: Callable[[Known], Training] | None = None
    run: Callable[[dict[str, Any]], Any] | None = None


def parse_config(args: Sequence[str]) -> RunConfig:
    """Two passes: ``--preset`` picks the defaults, then tyro parses everything (so options override the preset)."""
    preset = None
    for index, arg in enumerate(args):
        if arg == "--preset" and index + 1 < len(args):
            preset = args[index + 1]
        elif arg.startswith("--preset="):
            preset = arg.split("=", 1)[1]
    default = RunConfig()
    if preset is not None:
        default = load_preset(preset, RunConfig(preset=preset))
    description = (RunConfig.__doc__ or "") + f"\n\nPresets in configs/: {', '.join(available_presets())}."
    return tyro.cli(RunConfig, default=default, args=list(args), description=description)


def main(args: Sequence[str] | None = None) -> Path:
    config = parse_config(sys.argv[1:] if args is None else args)
    report = Run(config)()
    print(f"Report: {report} (and report.json, pictures beside it)")
    return report


def entrypoint() -> None:
    """``distilled3dgs-run``: a bad input or a failed stage ends with a message saying what to do, not a traceback."""
    try:
        with one_line_errors("distilled3dgs-run"):
            main()
    except KeyboardInterrupt:
        print("distilled3dgs-run: interrupted; re-run the same command to resume", file=sys.stderr)
        sys.exit(130)
