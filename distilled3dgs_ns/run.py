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

import contextlib
import io
import itertools
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import tyro

from distilled3dgs_ns.checkpoints import (
    MODEL_DIR,
    checkpoint_name,
    checkpoint_step,
    gaussian_state,
    load_pipeline,
    newest_checkpoint,
    read_checkpoint,
)
from distilled3dgs_ns.errors import TEACHER_CHECK_OPTION, UserError, error_line, one_line_errors
from distilled3dgs_ns.presets import available_presets, load_preset
from distilled3dgs_ns.pruning import PruneScore
from distilled3dgs_ns.scenes import EmbeddedSceneConfig
from distilled3dgs_ns.schedules import paper_fraction, to_step
from distilled3dgs_ns.stages import RunSetupError, StageBook, fingerprint, write_json_atomic

Variant = Literal["standard", "perturbed", "dropout"]
TEACHER_METHOD = "distilled3dgs-teacher"
STUDENT_METHOD = "distilled3dgs-student"
TIMESTAMP = "run"
"""Fixed ns-train timestamp, so each stage's folder (and its checkpoints) is found again after a crash."""
STEP_PATTERN = re.compile(r"^\s*(\d+)\s+\(\s*\d+(?:\.\d+)?%\)", re.MULTILINE)
"""ns-train's progress lines start with ``<step> (<percent>%)``."""
TIME_NOTE_EVERY_S = 10.0
"""How often a running training's wall time is saved (what a killed attempt can lose from the training time)."""
BASELINES = ("baseline-no-kd", "baseline-pruned-teacher", "baseline-capped")
"""Same-budget alternatives to the student (``--baselines``), as named in the report."""
NO_TRAINING_VIEW_TERMS = [
    "--pipeline.model.kd-weight", "0",
    "--pipeline.model.kd-weight-final", "0",
    "--pipeline.model.structure-weight", "0",
]  # fmt: skip
"""Student options that switch off the blend on training views and the geometry loss."""
NO_DISTILLATION = [*NO_TRAINING_VIEW_TERMS, "--pipeline.pseudo-view-rate", "0"]
"""Student options that switch every teacher term off (then no teachers are loaded)."""


TeacherTerms = Literal["paper", "novel-views", "none"]
NOVEL_VIEWS = [
    *NO_TRAINING_VIEW_TERMS,
    "--pipeline.pseudo-view-rate", "0.25",
    "--pipeline.pseudo-view-mode", "interpolate",
]  # fmt: skip
"""Student options for teacher supervision on novel poses only (teacher_terms novel-views)."""

ViewerFormat = Literal["spz", "sog", "glb", "glb-spz", "compressed-ply", "splat", "ply"]
"""The names of ``compression.formats.FORMATS`` (importing it here would cost --help seconds; a test ties them)."""


@dataclass
class SplatfactoSchedule:
    """Splatfacto's step-valued settings as fractions of each training run, so a preset's step count can change
    freely (splatfacto's own defaults assume 30k steps: densify until 15k, a new SH band every 1k, ...)."""

    warmup: float = paper_fraction(500)
    """Steps before densification starts."""
    densify_until: float = 0.5
    """Densification stops here (the student's first prune stops it earlier)."""
    sh_degree_every: float = paper_fraction(1000)
    """One more SH band every this much of the run."""
    resolution_every: float = paper_fraction(3000)
    """Coarse-to-fine: the image resolution doubles every this much of the run (with --model-args num-downscales)."""
    refine_every: int = 100
    """Densify / cull every this many steps (a step count: it sets how many images the statistics average over)."""
    lr_decay_length: float = 1.0
    """The position (and camera / bilateral-grid) learning rates reach their final values at this multiple of the run:
    1 is 3DGS's schedule over the whole run. Short runs do better with slower decay (10: splatfacto's 30k-step decay
    in a 3k-step run), since positions stay mobile for longer (docs/results.md)."""

    def options(self, steps: int) -> list[str]:
        """ns-train options for a run of ``steps`` steps (learning-rate decays end at the end of the run too)."""

        def at(fraction: float) -> str:
            return str(max(1, to_step(fraction, steps)))

        options = [
            "--pipeline.model.warmup-length", at(self.warmup),
            "--pipeline.model.stop-split-at", at(self.densify_until),
            "--pipeline.model.sh-degree-interval", at(self.sh_degree_every),
            "--pipeline.model.resolution-schedule", at(self.resolution_every),
            "--pipeline.model.refine-every", str(self.refine_every),
        ]  # fmt: skip
        decay = str(max(1, round(self.lr_decay_length * steps)))
        for name in ("means", "camera_opt", "bilateral_grid"):
            options += [f"--optimizers.{name}.scheduler.max-steps", decay]
        return options


@dataclass
class RunConfig:
    """Train the three Distilled-3DGS teachers and the student on one scene, evaluate every model on the test split,
    export the student (PLY and compact) and write ``<output-dir>/report.md`` / ``report.json``. Re-running the same
    command skips finished stages and resumes an interrupted one. Presets (``--preset``) set every default below."""

    data: Path | None = None
    """Scene folder for the dataparser. Omit it with --embedded-scene (the demo preset) to use the generated scene."""
    output_dir: Path = Path("outputs/distilled3dgs")
    """Everything goes here: trainings (runs/), evaluations, exports, the report. Re-use it to resume."""
    preset: str | None = None
    """Preset from configs/ (or a YAML path) whose values replace these defaults; options given here still win."""
    dataparser: str = "blender-data"
    """Any nerfstudio dataparser subcommand: nerfstudio-data, colmap, blender-data, ..."""
    dataparser_args: str = ""
    """Options for the dataparser subcommand, one string: --dataparser-args="--downscale-factor 4"."""
    embedded_scene: bool = False
    """Without --data: generate the plugin's embedded scene into <output-dir>/scene and use it."""
    scene: EmbeddedSceneConfig = field(default_factory=EmbeddedSceneConfig)
    """The embedded scene's settings (used with --embedded-scene only)."""
    variants: tuple[Variant, ...] = ("standard", "perturbed", "dropout")
    """Teachers to train; the student's geometry loss follows the standard one."""
    teacher_steps: int = 30_000
    student_steps: int = 30_000
    schedule: SplatfactoSchedule = field(default_factory=SplatfactoSchedule)
    """Splatfacto's step-valued settings, scaled to each run's length."""
    prune_sample_factor: float = 0.9
    """Share of the student's Gaussians kept by importance sampling (0.9 Mip-NeRF360, 0.5 T&T / Deep Blending)."""
    prune_reinitialize: bool = True
    """Re-initialise the student after the sampling prune (paper); short runs do better without."""
    student_cap_share: float | None = None
    """Cap the student's densification at this share of the standard teacher's final count (None: the model's cap)."""
    student_budget_share: float | None = None
    """The student ends with this share of the standard teacher's final count: staged cuts to the highest-scoring
    ones (--student-budget-at/-until/-stages) in place of the sampling prune and the importance-mass cut, so the
    count never depends on where the student started (None: those two, wherever they leave the count)."""
    student_budget_at: float = 0.5
    """Fraction of the run of the (first) budget cut; densification stops there."""
    student_budget_until: float = paper_fraction(20_000)
    """Fraction of the run of the last budget cut (the paper's last prune: 20k of 30k)."""
    no_kd_budget_at: float = 0.3
    """With --student-init teacher: fraction of the run of baseline-no-kd's first cut. That baseline learns without
    teachers, so it starts from the model's own points (random, or the dataparser's) as any splat trained without a
    teacher must, densifies until this cut, then cuts to the student's count like the student (demo, 3000 steps:
    0.3..0.6 was the best of five windows from 0.1..0.4 to 0.5..0.8 for such a start)."""
    no_kd_budget_until: float = 0.6
    """With --student-init teacher: fraction of the run of baseline-no-kd's last cut."""
    student_budget_stages: int = 4
    """Budget cuts, evenly spaced from --student-budget-at to --student-budget-until, each removing the same share
    of what is left: gradual pruning lets the survivors adapt between cuts."""
    student_prune_score: PruneScore = "blending-weight"
    """What the student's prunes rank by (--pipeline.model.prune-score): blending-weight (the paper's),
    top-contributions (the pixels where a Gaussian contributes most: a Gaussian that dominates a few pixels outranks
    one that adds a little everywhere) or global-significance (LightGaussian's)."""
    student_sparsity: float = 0.0
    """Weight of an L1 on the student's opacities until its last cut (--pipeline.model.sparsity-weight), so the
    Gaussians the image can do without fade before the cuts remove them, and the cuts take those rather than ones
    still needed (values measured: docs/results.md). 0: off."""
    teacher_terms: TeacherTerms = "paper"
    """What the student learns from the teachers besides its start. paper: the blend beside the ground truth on
    training views and the geometry loss; novel-views: the blend only on poses between training cameras (a quarter
    of the steps), where the ground truth has no image, which can pay on sparse views; none: the ground truth alone
    (with --student-init teacher the teacher still gives the start). Where the views are dense, or the teachers
    overfit (real photos), every term costs the student: the demo, cpu and capture presets use none
    (docs/results.md)."""
    student_init: Literal["random", "teacher"] = "random"
    """Where the student starts: random, the model's own initial points (then densify-then-prune); teacher, the
    standard teacher's Gaussians, all SH bands on from the start, cut to the budget by the staged count cuts."""
    depth: Literal["off", "auto", "relative", "metric"] = "off"
    """Depth supervision of the teachers, as the official code trains them (inverse-depth L1 against per-image depth
    maps given by nerfstudio's depth_file_path, see docs/usage.md, "Depth maps"): relative, monocular maps
    (Depth-Anything-V2 or any estimator) fitted per image to the dataparser's sparse points; metric, depth in the
    dataparser's units; auto, relative where the data has depth maps, else off."""
    depth_weight: float = 1.0
    """Weight of the teachers' depth loss at the start of their run (the official code's 1.0) ..."""
    depth_weight_final: float = 0.3
    """... decaying exponentially to this at the end (the official 0.01 in the paper presets; see the model's
    --pipeline.model.depth-weight-final)."""
    model_args: str = ""
    """ns-train options for every training (teachers and student), one string placed after the generated options so
    they win: --model-args="--pipeline.model.sh-degree 2". Replaces the preset's string (see configs/<preset>.yaml)."""
    teacher_args: str = ""
    """ns-train options for the teachers only (after --model-args), one string."""
    student_args: str = ""
    """ns-train options for the student only (after --model-args), one string."""
    device_type: Literal["auto", "cuda", "cpu", "mps"] = "auto"
    """Where to train and evaluate; auto: CUDA if available, else CPU."""
    devices: str = ""
    """Comma-separated GPU ids, e.g. 0,1,2: the teachers train in parallel, one process per GPU."""
    jobs: int = 1
    """Teachers trained at the same time on a CPU (with --devices: one per GPU instead). On a CPU, several
    single-threaded trainings use the cores better than one multi-threaded training."""
    threads: int | None = None
    """Most CPU threads per process (default: the cores divided among the --jobs trainings). Each training and
    evaluation uses fewer while other programs keep cores busy (docs/performance.md, "Training beside other work")."""
    save_every: int = 2000
    """Checkpoint period of every training, in steps: the most a crash can lose."""
    eval_views: int | None = None
    """Evaluate on the first N test views only (default: all)."""
    strip_views: int = 3
    """Test views in the report's picture strip."""
    render_repeats: int = 3
    """Timed renders per test view for the render time (median)."""
    compact: bool = True
    """Also write and evaluate the student's compact file (export/student.compact: fixed point, every SH from a
    codebook, fine-tuned; smaller than its SPZ at a smaller loss: docs/formats.md)."""
    compact_finetune_steps: int = 2000
    """Fine-tuning steps of the compact file (codebook and the other attributes train on the training views with
    the code assignment fixed); 0: none (the codebook then costs several times the loss: docs/formats.md)."""
    viewer_formats: tuple[ViewerFormat, ...] = ("spz", "sog", "glb-spz", "compressed-ply", "splat")
    """Also write the student in these viewer formats (export/student.spz...) and evaluate each file; the option
    with no value writes none. sog is written from the compact file where there is one (its codebook becomes the
    palette: docs/formats.md)."""
    baselines: bool = False
    """Also train and evaluate, at the student's final Gaussian count and step count, baseline-no-kd (the student's
    recipe without teachers: no teacher terms, and from the model's own points where the student starts from the
    teacher, see --no-kd-budget-at), baseline-pruned-teacher (the standard teacher pruned by global significance, then
    fine-tuned) and baseline-capped (splatfacto from scratch, densification capped at that count)."""
    redo: tuple[str, ...] = ()
    """Stages to run again although finished (and the stages that depend on them), e.g. --redo student."""

    def __post_init__(self) -> None:
        if self.teacher_steps < 1 or self.student_steps < 1:
            raise RunSetupError("--teacher-steps and --student-steps must be positive")
        if not self.variants:
            raise RunSetupError("--variants needs at least one teacher")
        if self.jobs < 1:
            raise RunSetupError("--jobs must be at least 1")
        if self.student_budget_share is not None and not 0 < self.student_budget_share <= 1:
            raise RunSetupError(f"--student-budget-share is a share in (0, 1], got {self.student_budget_share}")
        for name in ("student_budget", "no_kd_budget"):
            at, until = getattr(self, f"{name}_at"), getattr(self, f"{name}_until")
            if not 0 <= at <= until <= 1:
                flag = "--" + name.replace("_", "-")
                raise RunSetupError(
                    f"{flag}-at and {flag}-until are fractions of the run with 0 <= at <= until <= 1, "
                    f"got {at} and {until}"
                )
        if self.student_budget_stages < 1:
            raise RunSetupError(f"--student-budget-stages must be at least 1, got {self.student_budget_stages}")
        if len(set(self.variants)) != len(self.variants):
            raise RunSetupError(f"--variants lists a variant twice: {' '.join(self.variants)}")

    def early_cut_warning(self) -> str | None:
        """Why a student from its own points will likely end poorly with these budget cuts (None: no reason)."""
        if self.student_init != "random" or self.student_budget_share is None:
            return None
        if self.student_budget_at >= self.no_kd_budget_at:
            return None
        return (
            f"--student-init random with budget cuts from {self.student_budget_at:.0%} of the run: a start from the "
            "model's own points has not grown by then (demo, 3000 steps: 29.85 dB cut from 10% against 32.22 from "
            f"30%); pass --student-budget-at {self.no_kd_budget_at} --student-budget-until {self.no_kd_budget_until}, "
            "baseline-no-kd's window"
        )

    @property
    def student_is_no_kd(self) -> bool:
        """With no teacher terms and its own start, the student's recipe is baseline-no-kd's: its row is the
        student's, not trained twice."""
        return self.teacher_terms == "none" and self.student_init == "random"

    def gpu_ids(self) -> list[str]:
        ids = [part.strip() for part in self.devices.split(",") if part.strip()]
        for value in ids:
            if not value.isdigit():
                raise RunSetupError(f"--devices takes comma-separated GPU numbers such as 0,1,2; got '{self.devices}'")
        return ids


# --------------------------------------------------------------------------------------------------- trainings


@dataclass
class Training:
    """One ns-train run of the pipeline; its folder is fixed by output dir, stage name and TIMESTAMP."""

    stage: str
    method: str
    steps: int
    options: list[str]

    def folder(self, runs: Path) -> Path:
        return runs / self.stage / self.method / TIMESTAMP

    def runs_of(self, config_path: Path) -> Path:
        """The runs folder whose ``folder`` holds ``config_path`` (where a finished run was, by its record)."""
        return config_path.parents[len(self.folder(Path()).parts)]

    def final_checkpoint(self, runs: Path) -> Path:
        return self.folder(runs) / MODEL_DIR / checkpoint_name(self.steps - 1)

    def latest_checkpoint_step(self, runs: Path) -> int | None:
        """Step of the newest checkpoint of an interrupted run (None: nothing to resume from)."""
        latest = newest_checkpoint(self.folder(runs) / MODEL_DIR)
        return None if latest is None else checkpoint_step(latest)


def device_type_of(config: RunConfig) -> str:
    if config.device_type != "auto":
        return config.device_type
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def ns_train_command(
    training: Training, config: RunConfig, data: Path, runs: Path, resume_step: int | None
) -> list[str]:
    """The ns-train command line; a resumed run trains the remaining steps from the checkpoint after ``resume_step``."""
    remaining = training.steps if resume_step is None else training.steps - (resume_step + 1)
    command = [
        "ns-train", training.method,
        "--data", str(data),
        "--output-dir", str(runs),
        "--experiment-name", training.stage,
        "--timestamp", TIMESTAMP,
        "--max-num-iterations", str(remaining),
        "--steps-per-save", str(config.save_every),
        "--steps-per-eval-batch", "0",
        "--steps-per-eval-image", "0",
        "--steps-per-eval-all-images", "0",
        "--vis", "tensorboard",
        "--machine.device-type", device_type_of(config),
    ]  # fmt: skip
    if resume_step is not None:
        command += ["--load-dir", str(training.folder(runs) / MODEL_DIR)]
    return [*command, *training.options, config.dataparser, *shlex.split(config.dataparser_args)]


def training_fingerprint(training: Training, config: RunConfig, data: Path, runs: Path) -> str:
    """What a training's result depends on: its ns-train command without the checkpoint interval and with the output
    folder as a placeholder, so changing ``--save-every`` or moving the run folder keeps its stages and checkpoints."""
    command = ns_train_command(training, config, data, runs, None)
    interval = command.index("--steps-per-save")
    del command[interval : interval + 2]
    return fingerprint({"command": [arg.replace(str(runs.parent), "<output-dir>") for arg in command]})


def training_keys(
    training: Training, config: RunConfig, data: Path, runs: Path, record: dict[str, Any] | None = None
) -> tuple[str, str]:
    """The fingerprints a finished or interrupted training may carry: today's, and the legacy one (for the folder
    where ``record``, the training's stage record if any, says the run was when it finished)."""
    then = training.runs_of(Path(record["config"])) if record and "config" in record else runs
    return training_fingerprint(training, config, data, runs), legacy_fingerprint(training, config, data, runs, then)


def legacy_fingerprint(training: Training, config: RunConfig, data: Path, runs: Path, then: Path) -> str:
    """The fingerprint runs made before ``training_fingerprint`` recorded: the whole command, with the absolute paths
    of the run folder as it was then (``then``: its ``runs`` folder), so a moved run keeps its finished stages."""
    command = ns_train_command(training, config, data, runs, None)
    return fingerprint({"command": [arg.replace(str(runs.parent), str(then.parent)) for arg in command]})


def check_options(training: Training, config: RunConfig, data: Path, runs: Path) -> None:
    """Parse ``training``'s ns-train command line now, as ns-train will, so that a typo in a preset or in
    --model-args / --teacher-args / --student-args fails in seconds instead of when its stage starts."""
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    messages = io.StringIO()
    try:
        with contextlib.redirect_stderr(messages), contextlib.redirect_stdout(messages):
            tyro.cli(AnnotatedBaseConfigUnion, args=ns_train_command(training, config, data, runs, None)[1:])
    except SystemExit as error:
        lines = []
        for line in (line.strip(" │╭╮╰╯─") for line in messages.getvalue().splitlines()[1:]):  # [0]: box title
            if line.startswith("For full helptext"):
                break
            if line.strip("-") and not line.startswith("usage"):
                lines.append(line)
        reason = " ".join(lines)[:300]
        raise RunSetupError(
            f"{training.stage}: ns-train would refuse its options ({reason or f'exit {error.code}'}). Fix the "
            "option in the preset or in --model-args / --teacher-args / --student-args; nothing was trained."
        ) from None


class StageFailed(UserError):
    """A training subprocess failed; the message points at its log."""


def run_training(
    training: Training,
    config: RunConfig,
    data: Path,
    runs: Path,
    env: dict[str, str],
    on_step: Callable[[int], None],
    keys: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Run (or resume) one training to its final checkpoint; returns its figures for the stage record. ``keys``:
    its ``training_keys`` when the caller has them already.

    A checkpoint left by an interrupted run with *other* settings is never deleted: that is refused, pointing to
    ``--redo``. The wall time of every attempt is kept in ``<stage>.attempts.json`` (written before ns-train starts
    and every few seconds while it runs, so even a killed attempt counts) and the record reports the sum.
    """
    intent = runs / f"{training.stage}.attempts.json"
    keys = keys or training_keys(training, config, data, runs)
    key = keys[0]
    attempts = json.loads(intent.read_text()) if intent.exists() else {}
    resume_step = training.latest_checkpoint_step(runs)
    if attempts.get("fingerprint") not in keys:
        if resume_step is not None:
            raise RunSetupError(
                f"{training.stage} was interrupted at step {resume_step} with other settings than this command's; its "
                f"checkpoints in {training.folder(runs)} are kept. Re-run with the original settings to resume it, or "
                f"pass --redo {training.stage} to train it afresh."
            )
        shutil.rmtree(training.folder(runs), ignore_errors=True)  # no checkpoint: nothing to lose
    attempts = {"fingerprint": key, "seconds": attempts.get("seconds", []) if resume_step is not None else []}
    command = ns_train_command(training, config, data, runs, resume_step)
    log_path = runs / f"{training.stage}.log"
    start = last_write = time.perf_counter()
    attempts["seconds"].append(0.0)
    write_json_atomic(intent, attempts)

    def note_time() -> None:
        attempts["seconds"][-1] = time.perf_counter() - start
        write_json_atomic(intent, attempts)

    try:
        if resume_step is not None and resume_step >= training.steps - 1:
            code = 0
        else:
            with log_path.open("a") as log:
                log.write(f"$ {' '.join(command)}\n")
                log.flush()
                process = subprocess.Popen(
                    command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
                )
                assert process.stdout is not None
                for line in process.stdout:
                    log.write(line)
                    for match in STEP_PATTERN.finditer(line):
                        on_step(int(match.group(1)))  # ns-train counts from the loaded step
                    if time.perf_counter() - last_write > TIME_NOTE_EVERY_S:
                        note_time()
                        last_write = time.perf_counter()
                code = process.wait()
    finally:
        note_time()
    if code != 0 or not training.final_checkpoint(runs).exists():
        lines = log_path.read_text().splitlines() if log_path.exists() else []
        prefix = error_line("ns-train", "")
        ours = [i for i, line in enumerate(lines) if line.startswith(prefix)]  # a UserError, printed as one message
        if ours:
            follow = itertools.takewhile(lambda line: line.startswith("  "), lines[ours[-1] + 1 :])  # e.g. "  fix: ..."
            message = " ".join([lines[ours[-1]].removeprefix(prefix), *(line.strip() for line in follow)])
            raise StageFailed(f"{training.stage}: {message} (log: {log_path}). {_remedy(training, config, message)}")
        tail = "\n".join(lines[-15:])
        raise StageFailed(
            f"{training.stage}: ns-train exited with code {code}; last lines of {log_path}:\n{tail}\n"
            "Fix the cause and re-run the same command: finished stages are skipped and this one resumes from its "
            "latest checkpoint."
        )
    return {"resumed_from": resume_step, "train_s": sum(attempts["seconds"]), "attempts": len(attempts["seconds"])}


def _remedy(training: Training, config: RunConfig, message: str) -> str:
    """What to do after ns-train's one-line error. A failed teacher check is fixed on the teachers (redoing the
    student alone would fail again), so it is said in this command's options."""
    if TEACHER_CHECK_OPTION in message:
        teachers = " ".join(f"teacher-{variant}" for variant in config.variants)
        return (
            f"In this run: train the teachers longer (--teacher-steps more than {config.teacher_steps}, with --redo "
            f'{teachers}), or lower the check (--student-args="{TEACHER_CHECK_OPTION} <dB>").'
        )
    stage = training.stage
    return f"Fix the settings and pass --redo {stage}, or re-run as it is to resume from its latest checkpoint."


# --------------------------------------------------------------------------------------------------- the run


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

    # -- inputs

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

    def depth_options(self) -> list[str]:
        """The teachers' depth supervision (``--depth``; ``auto`` as the data found by ``check_data`` allows)."""
        cfg = self.config
        maps = ("relative" if self.data_has_depth else "off") if cfg.depth == "auto" else cfg.depth
        if maps == "off":
            return []
        return [
            "--pipeline.datamanager.depth-maps", maps,
            "--pipeline.model.depth-weight", str(cfg.depth_weight),
            "--pipeline.model.depth-weight-final", str(cfg.depth_weight_final),
        ]  # fmt: skip

    def environment(self, gpu: str | None, parallel: int) -> dict[str, str]:
        """A training's environment: its GPU, or its share of the CPU cores when ``parallel`` trainings share them."""
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        threads = self.config.threads
        if threads is None and gpu is None and parallel > 1:
            threads = max(1, (os.cpu_count() or 1) // parallel)
        if threads is not None:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        return env

    # -- stage definitions

    def teacher_trainings(self) -> list[Training]:
        cfg = self.config
        return [
            Training(
                stage=f"teacher-{variant}",
                method=TEACHER_METHOD,
                steps=cfg.teacher_steps,
                options=[
                    *cfg.schedule.options(cfg.teacher_steps),
                    "--pipeline.model.variant",
                    variant,
                    *self.depth_options(),
                    *shlex.split(cfg.model_args),
                    *shlex.split(cfg.teacher_args),
                ],
            )  # fmt: skip
            for variant in cfg.variants
        ]

    def student_options(self, teacher_count: int, from_teacher: bool, cuts: tuple[float, float]) -> list[str]:
        """The student's schedule and recipe without the teachers' terms (shared with baseline-no-kd): from the
        standard teacher's Gaussians or the model's own points, its count cuts from ``cuts[0]`` to ``cuts[1]``."""
        cfg = self.config
        options = [
            *cfg.schedule.options(cfg.student_steps),
            "--pipeline.model.prune-sample-factor", str(cfg.prune_sample_factor),
            "--pipeline.model.prune-reinitialize", str(cfg.prune_reinitialize),
            "--pipeline.model.prune-score", cfg.student_prune_score,
        ]  # fmt: skip
        options += {"paper": [], "novel-views": NOVEL_VIEWS, "none": NO_DISTILLATION}[cfg.teacher_terms]
        if cfg.student_sparsity > 0:
            options += ["--pipeline.model.sparsity-weight", str(cfg.student_sparsity)]
        if cfg.student_cap_share is not None:
            options += ["--pipeline.model.max-gaussians", str(max(1, round(cfg.student_cap_share * teacher_count)))]
        if from_teacher:
            options += ["--pipeline.init-from", str(self.standard_config()), "--pipeline.model.sh-degree-interval", "1"]
        if cfg.student_budget_share is not None:
            budget = str(max(1, math.floor(cfg.student_budget_share * teacher_count)))  # never above the share
            options += [
                "--pipeline.model.prune-count", budget,
                "--pipeline.model.prune-count-at", str(cuts[0]),
                "--pipeline.model.prune-count-until", str(cuts[1]),
                "--pipeline.model.prune-count-stages", str(cfg.student_budget_stages),
                "--pipeline.model.prune-sample-at", "None",
                "--pipeline.model.prune-mass-at", "None",
            ]  # fmt: skip
        return [*options, *shlex.split(cfg.model_args), *shlex.split(cfg.student_args)]

    def student_cuts(self) -> tuple[float, float]:
        """The run fractions of the student's first and last budget cut."""
        return self.config.student_budget_at, self.config.student_budget_until

    def student_training(self, teacher_configs: list[Path], teacher_count: int) -> Training:
        from_teacher = self.config.student_init == "teacher"
        recipe = self.student_options(teacher_count, from_teacher=from_teacher, cuts=self.student_cuts())
        options = ["--pipeline.teachers", *map(str, teacher_configs), *recipe]
        return Training(stage="student", method=STUDENT_METHOD, steps=self.config.student_steps, options=options)

    def baseline_trainings(self, standard_config: Path, teacher_count: int, student: StudentResult) -> list[Training]:
        """The same-budget baselines at the student's final count ``student.count`` and its step count."""
        cfg = self.config
        count = str(student.count)
        # The student's recipe from the model's own points (a teacher's start is what it learnt from a teacher), its
        # prunes ending at the student's final count: its count cut retargeted, or one added where its last was.
        own_start = cfg.student_init == "random"
        cuts = self.student_cuts() if own_start else (cfg.no_kd_budget_at, cfg.no_kd_budget_until)
        no_kd = [
            *self.student_options(teacher_count, from_teacher=False, cuts=cuts),
            *NO_DISTILLATION,
            "--pipeline.model.prune-count", count,
        ]  # fmt: skip
        if not student.has_count_cut:
            no_kd += ["--pipeline.model.prune-count-at", str(student.last_prune_at)]
        pruned_teacher = [
            *cfg.schedule.options(cfg.student_steps),
            *shlex.split(cfg.model_args),
            *NO_DISTILLATION,
            "--pipeline.init-from", str(standard_config),
            "--pipeline.model.sh-degree-interval", "1",  # the teacher's SH bands are trained already
            "--pipeline.model.prune-score", "global-significance",
            "--pipeline.model.prune-sample-at", "None",
            "--pipeline.model.prune-share-at", "None",
            "--pipeline.model.prune-mass-at", "None",
            "--pipeline.model.prune-count-at", "0",
            "--pipeline.model.prune-count", count,
            "--pipeline.model.prune-count-stages", "1",
        ]  # fmt: skip
        capped = [
            *cfg.schedule.options(cfg.student_steps),
            "--pipeline.model.variant", "standard",
            *shlex.split(cfg.model_args),
            *shlex.split(cfg.teacher_args),
            "--pipeline.model.max-gaussians", count,
            "--pipeline.model.num-random", str(max(1, student.count // 2)),  # a random start below the cap, to grow
        ]  # fmt: skip
        steps = cfg.student_steps
        return [
            Training(stage="baseline-no-kd", method=STUDENT_METHOD, steps=steps, options=no_kd),
            Training(stage="baseline-pruned-teacher", method=STUDENT_METHOD, steps=steps, options=pruned_teacher),
            Training(stage="baseline-capped", method=TEACHER_METHOD, steps=steps, options=capped),
        ]

    def stages(self) -> list[Stage]:
        """Every stage of the run in the order it runs, each with the stages it consumes and how it runs."""
        cfg = self.config
        teachers = self.teacher_stages()
        teacher_configs = [self.runs / name / TEACHER_METHOD / TIMESTAMP / "config.yml" for name in teachers]
        stages = [
            Stage("scene", (), run=lambda done: None if cfg.data is not None else self.stage_scene(self.scene_path()))
        ]
        stages += [Stage(t.stage, ("scene",), training=lambda known, t=t: t) for t in self.teacher_trainings()]
        stages.append(
            Stage(
                "student",
                ("scene", *teachers),
                training=lambda known: self.student_training(teacher_configs, known.need_teacher_count()),
            )
        )
        for name in BASELINES if cfg.baselines else ():
            inputs = ("scene", "student", self.standard_stage())
            if name == "baseline-no-kd" and cfg.student_is_no_kd:
                stages.append(Stage(name, inputs, run=lambda done: done["student"]))
                continue

            def baseline(known: Known, name: str = name) -> Training:
                trainings = self.baseline_trainings(
                    self.standard_config(), known.need_teacher_count(), known.need_student()
                )
                return next(training for training in trainings if training.stage == name)

            stages.append(Stage(name, inputs, training=baseline))
        models = self.model_stages()
        for name in models:
            stages.append(
                Stage(
                    f"eval-{name}",
                    (name,),
                    run=lambda done, n=name: self.stage_eval(n, done[n], student=n == "student"),
                )
            )
        stages.append(Stage("report", tuple(f"eval-{name}" for name in models), run=self.stage_report))
        return stages

    def teacher_stages(self) -> list[str]:
        return [f"teacher-{variant}" for variant in self.config.variants]

    def standard_stage(self) -> str:
        """The teacher the geometry loss and the pruned-teacher baseline follow."""
        return "teacher-standard" if "standard" in self.config.variants else self.teacher_stages()[0]

    def model_stages(self) -> list[str]:
        """The trainings that are evaluated and reported, in report order."""
        return [*self.teacher_stages(), "student", *(BASELINES if self.config.baselines else ())]

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

    def standard_config(self) -> Path:
        """Where the standard teacher's config.yml is (or will be)."""
        return self.runs / self.standard_stage() / TEACHER_METHOD / TIMESTAMP / "config.yml"

    def planned_trainings(self, teacher_count: int, student_count: int) -> list[Training]:
        """Every training of the run before any has run, at stand-in counts for the teacher's and the student's
        results (the student's with its schedule: its count cut, or the paper's last prune)."""
        has_cut = self.config.student_budget_share is not None
        known = Known(teacher_count, StudentResult(student_count, self.config.student_budget_until, has_cut))
        return [stage.training(known) for stage in self.stages() if stage.training is not None]

    def check_all_options(self, data: Path) -> None:
        """Every training's command line parses (with stand-in counts) before anything trains."""
        for training in self.planned_trainings(teacher_count=1, student_count=1):
            check_options(training, self.config, data, self.runs)

    # -- stages

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
            keys = training_keys(training, self.config, data, self.runs, self.book.get(training.stage))
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
                    figures = run_training(
                        training,
                        self.config,
                        data,
                        self.runs,
                        self.environment(gpu, workers),
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

    def stage_eval(self, name: str, record: dict[str, Any], student: bool) -> dict[str, Any]:
        """Test-split figures, strip views and PLY export of one trained model (and the compact file of the student)."""
        from distilled3dgs_ns.compression.compact_format import FORMAT_VERSION
        from distilled3dgs_ns.evaluation import evaluate_pipeline

        stage = f"eval-{name}"
        cfg = self.config
        settings = {"model": record["fingerprint"], "views": cfg.eval_views, "strip": cfg.strip_views}
        if cfg.compact and student:
            settings["compact"] = {"format": FORMAT_VERSION, "finetune_steps": cfg.compact_finetune_steps}
        else:
            settings["compact"] = False
        if student:  # only the student's evaluation writes files (teachers' fingerprints stay as they were)
            settings["files"] = list(cfg.viewer_formats)
        key = fingerprint(settings)
        existing = self.book.check(stage, key)
        if existing is not None:
            self.log(f"{stage}: finished earlier, skipping")
            return existing
        pipeline = load_pipeline(Path(record["config"]), data=self.scene_path(), device=device_type_of(cfg))
        views_dir = self.output_dir / "views" / name
        result = evaluate_pipeline(
            pipeline,
            cfg.eval_views,
            keep_views=cfg.strip_views,
            render_repeats=cfg.render_repeats,
            label=stage,
            keep_rgb=student,
        )
        save_views(views_dir, result.ground_truth, result.renders)
        from distilled3dgs_ns.compression import gaussians_of

        gaussians = gaussians_of(pipeline.model)  # what the files hold: the visible Gaussians
        write_page_view(pipeline, gaussians, self.output_dir / "views", name)
        exports = self.output_dir / "export"
        ply = export_ply(gaussians, exports / f"{name}.ply")
        figures: dict[str, Any] = {**result.figures, "size_mb": ply.stat().st_size / 1e6, "ply": str(ply)}
        models = {name: {**figures, "train_s": record["train_s"]}}
        if student:
            models.update(self.student_files(pipeline, Path(record["config"]), exports, record["train_s"], result.rgb))
        return self.book.finish(stage, key, models=models, views=str(views_dir))

    def student_files(
        self, pipeline: Any, config: Path, exports: Path, train_s: float, reference: list[Any]
    ) -> dict[str, dict[str, Any]]:
        """Write the trained student's compact file and viewer files (these in the capture's frame), then evaluate
        what each decodes to (rows ``student-compact``, ``student-spz``...), with ``psnr_vs_model`` against the
        student's own renders."""
        from distilled3dgs_ns.compression import apply_to_model, read_gaussians, write_files
        from distilled3dgs_ns.compression.frame import Similarity, from_capture
        from distilled3dgs_ns.evaluation import evaluate_pipeline

        cfg = self.config
        dataparser = Similarity.of_run(config)
        steps = cfg.compact_finetune_steps if cfg.compact else None
        files = write_files(pipeline, dataparser, exports, "student", cfg.viewer_formats, steps)
        rows: dict[str, dict[str, Any]] = {}
        for kind, (path, export_s) in files.items():
            decoded = read_gaussians(path, pipeline.model.config.sh_degree)
            apply_to_model(pipeline.model, decoded if kind == "compact" else from_capture(decoded, dataparser))
            result = evaluate_pipeline(
                pipeline, cfg.eval_views, render_repeats=cfg.render_repeats, label=f"eval-student-{kind}",
                reference=reference,
            )  # fmt: skip
            figures = dict(result.figures)
            figures["psnr_vs_model"] = figures.pop("psnr_vs_reference")
            figures |= {"size_mb": path.stat().st_size / 1e6, "file": str(path), "train_s": train_s}
            rows[f"student-{kind}"] = figures | {"export_s": export_s}
        return rows

    # -- everything

    def stage_report(self, done: dict[str, Any]) -> Path:
        from distilled3dgs_ns.report import write_report

        evaluations = {name: done[f"eval-{name}"] for name in self.model_stages()}
        return write_report(self.output_dir, self.config, evaluations, device=device_type_of(self.config))

    def known(self, done: dict[str, Any]) -> Known:
        """What the finished stages in ``done`` tell the later command lines."""
        standard, student = done.get(self.standard_stage()), done.get("student")
        return Known(
            None if standard is None else gaussian_count(standard),
            None
            if student is None or not self.config.baselines
            else StudentResult.of(student, self.config.student_steps),
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


def gaussian_count(record: dict[str, Any]) -> int:
    """Gaussian count of a finished training, read from its newest checkpoint."""
    latest = newest_checkpoint(Path(record["config"]).parent / MODEL_DIR)
    if latest is None:
        raise RunSetupError(f"{record['stage']}: no checkpoint beside {record['config']}; --redo {record['stage']}")
    return int(gaussian_state(read_checkpoint(latest)["pipeline"])["means"].shape[0])


@dataclass(frozen=True)
class Stage:
    """One stage of a run: its name, the stages whose results it consumes, and either the training it is (built from
    what the finished stages found, ``Known``) or what it runs in this process (given the finished stages' results)."""

    name: str
    inputs: tuple[str, ...]
    training: Callable[[Known], Training] | None = None
    run: Callable[[dict[str, Any]], Any] | None = None


@dataclass(frozen=True)
class Known:
    """What later command lines depend on: the standard teacher's final count and the student's result."""

    teacher_count: int | None = None
    student: StudentResult | None = None

    def need_teacher_count(self) -> int:
        if self.teacher_count is None:
            raise RuntimeError("a stage that needs the standard teacher's count runs before the teacher trained")
        return self.teacher_count

    def need_student(self) -> StudentResult:
        if self.student is None:
            raise RuntimeError("a baseline runs before the student trained")
        return self.student


@dataclass(frozen=True)
class StudentResult:
    """What the baselines need of a trained student: its final count and when its prunes ended."""

    count: int
    last_prune_at: float
    """Fraction of the run of the student's last prune (0 without prunes)."""
    has_count_cut: bool

    @staticmethod
    def of(record: dict[str, Any], steps: int) -> StudentResult:
        import yaml

        from distilled3dgs_ns.student import prune_schedule_of

        model = yaml.load(Path(record["config"]).read_text(), Loader=yaml.Loader).pipeline.model
        schedule = prune_schedule_of(model, steps)
        last = schedule.events[-1].at if schedule.events else 0.0
        return StudentResult(gaussian_count(record), last, model.prune_count_at is not None)


def save_views(folder: Path, ground_truth: list, renders: list) -> None:
    """Keep the strip views as PNGs (gt_<i>.png, render_<i>.png) for the report."""
    import imageio.v2 as imageio

    folder.mkdir(parents=True, exist_ok=True)
    for index, (gt, render) in enumerate(zip(ground_truth, renders, strict=True)):
        imageio.imwrite(folder / f"gt_{index}.png", gt)
        imageio.imwrite(folder / f"render_{index}.png", render)


def write_page_view(pipeline: Any, gaussians: Any, views: Path, name: str) -> None:
    """What report.html shows of a model (``gaussians``, in nerfstudio's frame): its ``.splat`` records and the
    pipeline's first test camera."""
    from distilled3dgs_ns.compression.splat import splat_bytes
    from distilled3dgs_ns.durable import write_atomic
    from distilled3dgs_ns.report_html import camera_file, camera_json, splat_file

    views.mkdir(parents=True, exist_ok=True)
    write_atomic(splat_file(views, name), splat_bytes(gaussians))
    camera = pipeline.datamanager.fixed_indices_eval_dataloader[0][0]
    write_json_atomic(camera_file(views), camera_json(camera, gaussians.means))


def export_ply(gaussians: Any, path: Path) -> Path:
    """The Gaussians as a standard 3DGS PLY (what ns-export gaussian-splat writes)."""
    from distilled3dgs_ns.compression import write_ply

    path.parent.mkdir(parents=True, exist_ok=True)
    write_ply(path, gaussians)
    return path


# --------------------------------------------------------------------------------------------------- CLI


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


if __name__ == "__main__":
    entrypoint()
