"""What a run is asked to do: ``RunConfig`` (every option of ``distilled3dgs-run``, presets fill it) and the option
lists that switch the student's teacher terms; no training happens here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from distilled3dgs_ns.names import PAPER_RUN_LENGTH, FormatName, TeacherVariant
from distilled3dgs_ns.pruning import PruneScore
from distilled3dgs_ns.scenes import EmbeddedSceneConfig
from distilled3dgs_ns.schedules import paper_fraction, to_step
from distilled3dgs_ns.stages import RunSetupError

TIMESTAMP = "run"
"""Fixed ns-train timestamp, so each stage's folder (and its checkpoints) is found again after a crash."""


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
    variants: tuple[TeacherVariant, ...] = ("standard", "perturbed", "dropout")
    """Teachers to train; the student's geometry loss follows the standard one."""
    teacher_steps: int = PAPER_RUN_LENGTH
    student_steps: int = PAPER_RUN_LENGTH
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
    viewer_formats: tuple[FormatName, ...] = ("spz", "sog", "glb-spz", "compressed-ply", "splat")
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


def device_type_of(config: RunConfig) -> str:
    if config.device_type != "auto":
        return config.device_type
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
