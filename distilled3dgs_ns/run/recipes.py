"""The run's trainings as ns-train command lines: the teachers', the student's and the same-budget baselines' recipes,
and what later recipes depend on (the standard teacher's count, the student's result).
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distilled3dgs_ns.checkpoints import (
    MODEL_DIR,
    checkpoint_name,
    checkpoint_step,
    gaussian_state,
    newest_checkpoint,
    read_checkpoint,
)
from distilled3dgs_ns.names import STUDENT_METHOD, TEACHER_METHOD
from distilled3dgs_ns.run.config import (
    NO_DISTILLATION,
    NOVEL_VIEWS,
    TIMESTAMP,
    RunConfig,
)
from distilled3dgs_ns.stages import RunSetupError


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


@dataclass
class Recipes:
    """The ns-train command of every training of a run, from its config: where the runs go (``runs``) and whether
    the scene has depth maps (``data_has_depth``, which ``--depth auto`` follows; the run reads it from the data)."""

    config: RunConfig
    runs: Path
    data_has_depth: bool = False

    def teacher_stages(self) -> list[str]:
        return [f"teacher-{variant}" for variant in self.config.variants]

    def standard_stage(self) -> str:
        """The teacher the geometry loss and the pruned-teacher baseline follow."""
        return "teacher-standard" if "standard" in self.config.variants else self.teacher_stages()[0]

    def standard_config(self) -> Path:
        """Where the standard teacher's config.yml is (or will be)."""
        return self.runs / self.standard_stage() / TEACHER_METHOD / TIMESTAMP / "config.yml"

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


def gaussian_count(record: dict[str, Any]) -> int:
    """Gaussian count of a finished training, read from its newest checkpoint."""
    latest = newest_checkpoint(Path(record["config"]).parent / MODEL_DIR)
    if latest is None:
        raise RunSetupError(f"{record['stage']}: no checkpoint beside {record['config']}; --redo {record['stage']}")
    return int(gaussian_state(read_checkpoint(latest)["pipeline"])["means"].shape[0])


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
