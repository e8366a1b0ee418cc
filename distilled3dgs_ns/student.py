"""The student: splatfacto trained on ground truth and the teachers' blend, then pruned to the Gaussians that matter.

Per step the loss is ``(1 - kd) * L(student, GT) + kd * L(student, blend)`` with splatfacto's ``L = 0.8 * L1 + 0.2 *
(1 - SSIM)``, plus, inside its window, the structure loss against the standard teacher's Gaussian centres.
Densification is splatfacto's (optionally capped at ``max_gaussians``, without opacity resets, with Mini-Splatting's
blur split) and stops at the first prune, unless count cuts leave fewer Gaussians than the budget (a start cut
before it grew): it then resumes, capped at the budget, until the last cut. The prune events are a ``PruneSchedule``
(``pruning.py``) ranking the Gaussians by one score over the training views (``prune_score``: accumulated blending
weight, or LightGaussian's global significance), optionally after Mini-Splatting's intersection-preserving filter:
importance-proportional sampling, a lowest-share cut (LightGaussian's), a cumulative-mass cut and a count cut to a
fixed budget, possibly in stages. What follows the last prune is co-adaptation: plain training without
densification, so the survivors re-adapt to the missing ones (LightGaussian's 5000 steps).

Teachers never enter this module tree: the pipeline attaches a ``TeacherEnsemble`` (a plain object) and the training
cameras, and hands each step's blended target in the batch as a straight-alpha RGBA image under ``TEACHER_TARGET``,
which the model downsamples and composites exactly like its RGBA ground truth. Every schedule is a fraction of the
run resolved against ``--max-num-iterations``; prune events fire at one exact step each, so a resumed run never
repeats one (the checkpoint already holds the pruned set).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes
from nerfstudio.utils import writer
from nerfstudio.utils.rich_utils import CONSOLE
from nerfstudio.viewer.viewer_elements import ViewerCheckbox, ViewerNumber
from torch import Tensor

from distilled3dgs_ns.portable_splatfacto import (
    GAUSSIAN_PARAM_NAMES,
    PortableSplatfactoModel,
    PortableSplatfactoModelConfig,
)
from distilled3dgs_ns.pruning import (
    PRUNE_SCORES,
    DensifyBudget,
    PruneEvent,
    PruneResult,
    PruneSchedule,
    PruneScore,
    ScoreAndTops,
    accumulated_blending_weight,
    prune_gaussians,
    restart_adam,
    staged_count_events,
)
from distilled3dgs_ns.rasterization import hit_counts, rasterization
from distilled3dgs_ns.schedules import RunWindow, paper_fraction, to_step
from distilled3dgs_ns.significance import significance_scores, training_top_contributions
from distilled3dgs_ns.strategy import BLUR_KEY, NO_RESET, CappedStrategy
from distilled3dgs_ns.structure_loss import StructureLoss, StructureLossConfig
from distilled3dgs_ns.teachers import TeacherEnsemble, composite

TEACHER_TARGET = "teacher_image"
"""Batch key of the teachers' blended render (straight-alpha RGBA, full resolution)."""
REINIT_OPACITY = 0.1
"""Opacity of re-initialised Gaussians after the sampling prune (the official code's and splatfacto's initial value)."""
MIN_COADAPTATION = paper_fraction(1_000)
"""Co-adaptation after the last prune shorter than this share of the run (1000 of 30k steps; LightGaussian trains
5000 after its prune) leaves the survivors little time to make up for the pruned Gaussians: warn."""


@dataclass
class StudentModelConfig(PortableSplatfactoModelConfig):
    """The Distilled-3DGS student. Step-valued settings are fractions of ``--max-num-iterations`` (paper: 30k)."""

    _target: type = field(default_factory=lambda: StudentModel)
    kd_weight: float = 0.4
    """Weight of the teacher-blend term; the ground truth gets ``1 - kd_weight`` (paper: 0.4)."""
    kd_decay_start: float = 1.0
    """Fraction of the run after which kd_weight falls linearly to kd_weight_final at the end (1.0: no decay), so
    the ground truth can take over from the teachers late in training."""
    kd_weight_final: float = 0.0
    """kd_weight at the end of the run when decaying."""
    structure_weight: float = 1.0
    """Weight of the spatial-distribution (geometry) loss against the standard teacher's centres (0: off)."""
    structure: StructureLossConfig = field(default_factory=StructureLossConfig)
    """Histogram of the geometry loss: the paper's factorised marginals, or a true joint 3-D histogram."""
    structure_window: RunWindow = field(
        default_factory=lambda: RunWindow(start=paper_fraction(20_000), stop=1.0, every=paper_fraction(1_000))
    )
    """When the geometry loss is added (paper: every 1000 steps between 20k and 30k)."""
    max_gaussians: int | None = 4_500_000
    """Cap on the count during densification (the official code's default); None: no cap."""
    prune_score: PruneScore = "blending-weight"
    """What every prune event ranks the Gaussians by, over the training views: blending-weight, each Gaussian's
    accumulated alpha * transmittance (Distilled-3DGS, Mini-Splatting); top-contributions, the pixels where it has
    the largest alpha * transmittance (Mini-Splatting's area_max; ties by blending weight), which keeps what
    changes pixels most at a budget; global-significance, LightGaussian's
    hit count * opacity * normalised volume ^ significance_beta."""
    significance_beta: float = 0.1
    """Volume exponent of the global significance (LightGaussian: 0.1; 0 ranks by hit count * opacity)."""
    prune_sample_at: float | None = paper_fraction(15_000)
    """Importance-sampling prune (densification stops at the first prune); None: skip it."""
    prune_sample_factor: float = 0.9
    """Share of the Gaussians with non-zero importance kept by sampling (Mip-NeRF360 0.9; T&T, Deep Blending 0.5)."""
    prune_reinitialize: bool = True
    """Re-initialise the sampled Gaussians (scale from neighbours, identity rotation, opacity 0.1, DC colour kept,
    fresh Adam state), as the official code does after the sampling prune."""
    prune_share_at: float | None = None
    """LightGaussian's prune: remove the prune_share lowest-scoring Gaussians here; None: skip it. Densification
    has stopped by then (at the first prune); the run after the last prune is co-adaptation."""
    prune_share: float = 0.66
    """Share of the Gaussians the lowest-share prune removes (LightGaussian: 0.66)."""
    prune_mass_at: float | None = paper_fraction(20_000)
    """Cumulative-mass prune; None: skip it."""
    prune_mass: float = 0.99
    """Share of the total importance the Gaussians kept by the mass prune hold."""
    prune_count_at: float | None = None
    """Count cut: keep the prune_count highest-scoring Gaussians here; None: skip it (the same-budget baselines and
    a teacher-initialised student prune to their budget so)."""
    prune_count: int | None = None
    """Gaussians the count cut keeps."""
    prune_count_stages: int = 1
    """Reach prune_count in this many cuts, evenly spaced from prune_count_at to prune_count_until, each removing
    the same share of what is left (gradual pruning lets the survivors adapt between cuts)."""
    prune_count_until: float | None = None
    """Fraction of the run of the last staged count cut (with prune_count_stages > 1)."""
    prune_top_filter: bool = True
    """Mini-Splatting's intersection-preserving filter: before every prune, a Gaussian that is the top contributor
    (largest alpha * T) of no training pixel scores 0, so it goes first (the official student's)."""
    prune_fresh_optimizer: bool = False
    """Restart Adam (empty moments) after every prune, as the official code's training_setup does (the sampling
    prune with prune_reinitialize always restarts it). Off by default: moments
    that survive a cut cost less than a cold restart in short runs (docs/results.md)."""
    prune_seed: int = 0
    """Seed of the importance sampling."""
    reset_opacity: bool = False
    """Splatfacto's periodic opacity reset (reset_alpha_every) during densification; the official student has
    none (its teachers do)."""
    sparsity_weight: float = 0.0
    """L1 on the activated opacities until the last prune, so Gaussians the image can do without fade before the
    cuts remove them (0: off)."""
    blur_split: bool = False
    """Mini-Splatting's blur split: at each refinement, also split every Gaussian that was the top contributor of
    more than blur_split_area of a training view's pixels since the last one, whatever its gradient."""
    blur_split_area: float = 1 / 5000
    """Share of a view's pixels above which a top contributor counts as a blur (official: H * W / 5000)."""

    def __post_init__(self) -> None:
        """Fail at start-up rather than at the prune step, mid-run."""
        for name in ("prune_sample_at", "prune_share_at", "prune_mass_at", "prune_count_at"):
            fraction = getattr(self, name)
            if fraction is not None and not 0.0 <= fraction <= 1.0:
                raise ValueError(f"{name} is a fraction of the run in [0, 1] (or None), got {fraction}")
        for name in ("prune_share", "prune_mass"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.prune_count_at is not None and (self.prune_count is None or self.prune_count < 1):
            raise ValueError(f"prune_count_at needs a positive prune_count, got {self.prune_count}")
        if self.prune_count_at is not None:
            staged_count_events(1, self.prune_count_at, self.prune_count_until, self.prune_count_stages)


def prune_schedule_of(config: StudentModelConfig, run_length: int) -> PruneSchedule:
    """The student's prune events from its config, resolved against a run of ``run_length`` steps."""
    settings = (
        ("sample", config.prune_sample_at, config.prune_sample_factor),
        ("share", config.prune_share_at, config.prune_share),
        ("mass", config.prune_mass_at, config.prune_mass),
    )
    events = [PruneEvent(kind, at, float(value)) for kind, at, value in settings if at is not None]
    if config.prune_count_at is not None and config.prune_count is not None:
        events += staged_count_events(
            config.prune_count, config.prune_count_at, config.prune_count_until, config.prune_count_stages
        )
    return PruneSchedule(
        events,
        top_filter=config.prune_top_filter,
        seed=config.prune_seed,
        run_length=run_length,
        reinitialize_after_sample=config.prune_reinitialize,
        fresh_optimizer=config.prune_fresh_optimizer,
    )


class StudentModel(PortableSplatfactoModel):
    """Splatfacto plus distillation losses, capped densification and importance pruning."""

    config: StudentModelConfig

    def populate_modules(self) -> None:
        super().populate_modules()
        self.teachers: TeacherEnsemble | None = None
        self.structure_loss: StructureLoss | None = None
        self.importance_views: Cameras | None = None
        self.show_teachers = ViewerCheckbox(
            name="Show teacher renders",
            default_value=True,
            visible=False,  # shown once teachers are attached (training only)
            hint="Adds teacher_blend and teacher_<i>_<variant> to the output types (Split Screen compares them)",
        )
        self.gaussian_count = ViewerNumber(name="Gaussian count", default_value=self.num_points, disabled=True)
        self.set_run_length(self.run_length)

    def _make_strategy(self) -> CappedStrategy:
        strategy = super()._make_strategy()
        if not self.config.reset_opacity:
            strategy.reset_every = NO_RESET
        if self.config.blur_split:
            strategy.blur_split_area = self.config.blur_split_area
        return strategy

    # ------------------------------------------------------------------------------------------- wiring

    def attach_teachers(self, teachers: TeacherEnsemble) -> None:
        """Use ``teachers`` for viewer outputs and, if the geometry loss is on, the standard one's centres."""
        self.teachers = teachers
        self.show_teachers.visible = True
        if self.config.structure_weight > 0:
            self.structure_loss = StructureLoss(teachers.standard.model.means.detach(), self.config.structure)

    @torch.no_grad()
    def load_gaussians(self, values: dict[str, Tensor]) -> None:
        """Replace every Gaussian parameter (before training: optimizers are built from the parameters after)."""
        for name in GAUSSIAN_PARAM_NAMES:
            self.gauss_params[name] = torch.nn.Parameter(values[name].detach().clone())
        self.strategy_state = self.strategy.initialize_state(scene_scale=1.0)
        self.show_count()

    def set_importance_views(self, cameras: Cameras) -> None:
        """The training cameras whose blending weights define importance for pruning."""
        self.importance_views = cameras

    def set_run_length(self, run_length: int) -> None:
        """Resolve the run-fraction schedules; densification stops at the first prune."""
        super().set_run_length(run_length)
        self.prune_schedule = prune_schedule_of(self.config, run_length)
        stop = min([self.config.stop_split_at, *self.prune_steps()])
        self.strategy.budget = DensifyBudget(self.prune_schedule, stop, self.config.max_gaussians)
        self.strategy.refine_stop_iter = stop

    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> list[TrainingCallback]:
        callbacks = super().get_training_callbacks(training_callback_attributes)
        if training_callback_attributes.trainer is not None:
            self.announce_prune_schedule()
        return callbacks

    # ------------------------------------------------------------------------------------------- losses

    def kd_weight_at(self, step: int) -> float:
        """kd_weight, constant until ``kd_decay_start`` then linear to ``kd_weight_final`` at the end of the run."""
        cfg = self.config
        start = to_step(cfg.kd_decay_start, self.run_length)
        if step <= start or start >= self.run_length:
            return cfg.kd_weight
        progress = min((step - start) / (self.run_length - start), 1.0)
        return cfg.kd_weight + progress * (cfg.kd_weight_final - cfg.kd_weight)

    def structure_loss_due(self, step: int) -> bool:
        """Whether the geometry loss is part of this step's loss."""
        return (
            self.structure_loss is not None
            and self.config.structure_weight > 0
            and self.config.structure_window.fires(step, self.run_length)
        )

    def _teacher_target(self, outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        """The blend at the current training resolution, composited on this step's background like the GT."""
        return self.composite_with_background(self.get_gt_img(batch[TEACHER_TARGET]), outputs["background"])

    def photometric_loss(self, predicted: Tensor, target: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """Splatfacto's ``(1 - ssim_lambda) * L1 + ssim_lambda * (1 - SSIM)`` (0.8 / 0.2), masked like its GT loss."""
        if "mask" in batch:
            mask = self._downscale_if_required(batch["mask"]).to(self.device)
            predicted, target = predicted * mask, target * mask
        l1 = torch.abs(target - predicted).mean()
        ssim = self.ssim(target.permute(2, 0, 1)[None], predicted.permute(2, 0, 1)[None])
        return (1 - self.config.ssim_lambda) * l1 + self.config.ssim_lambda * (1 - ssim)

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> dict[str, Tensor]:
        loss_dict = super().get_loss_dict(outputs, batch, metrics_dict)
        kd_weight = self.kd_weight_at(self.step) if TEACHER_TARGET in batch else 0.0
        if kd_weight > 0:
            target = self._teacher_target(outputs, batch)
            loss_dict["main_loss"] = (1 - kd_weight) * loss_dict["main_loss"]
            loss_dict["kd_loss"] = kd_weight * self.photometric_loss(outputs["rgb"], target, batch)
        if self.training and self.structure_loss_due(self.step):
            assert self.structure_loss is not None
            loss_dict["structure_loss"] = self.config.structure_weight * self.structure_loss(self.means)
        if self.training and self.config.sparsity_weight > 0:
            steps = self.prune_steps()
            if steps and self.step < steps[-1]:
                loss_dict["sparsity_loss"] = self.config.sparsity_weight * torch.sigmoid(self.opacities).mean()
        return loss_dict

    def get_metrics_dict(self, outputs, batch) -> dict[str, Any]:
        metrics = super().get_metrics_dict(outputs, batch)
        if TEACHER_TARGET in batch:
            metrics["psnr_to_teachers"] = self.psnr(outputs["rgb"], self._teacher_target(outputs, batch))
            metrics["kd_weight"] = self.kd_weight_at(self.step)
        return metrics

    # ------------------------------------------------------------------------------------------- pruning

    def prune_steps(self) -> list[int]:
        """The steps of this run's prune events, ascending."""
        return self.prune_schedule.steps()

    def coadaptation_steps(self) -> int | None:
        """Steps of co-adaptation (training without densification after the last prune); None without prunes."""
        steps = self.prune_steps()
        return self.run_length - steps[-1] if steps else None

    def announce_prune_schedule(self) -> None:
        """Log when densification stops, the prunes and the co-adaptation; warn when the latter is very short."""
        tail = self.coadaptation_steps()
        if tail is None:
            return
        CONSOLE.log(
            f"student: densification until step {self.strategy.refine_stop_iter}, prunes by "
            f"{self.config.prune_score} at steps {self.prune_steps()}, then {tail} steps of co-adaptation"
        )
        if tail < to_step(MIN_COADAPTATION, self.run_length):
            CONSOLE.log(
                f"[bold yellow]Warning: only {tail} of {self.run_length} steps of co-adaptation after the last "
                "prune; the surviving Gaussians barely re-adapt. Prune earlier (--pipeline.model.prune-*-at) or "
                "train longer."
            )

    def step_post_backward(self, step: int) -> None:
        """Densify as the strategy's budget allows, then prune when scheduled."""
        budget, before = self.strategy.budget, self.num_points
        regrowing = budget is not None and budget.regrowing
        super().step_post_backward(step)
        if budget is not None and budget.regrowing and not regrowing:
            CONSOLE.log(
                f"step {step}: the cuts left {before} Gaussians, below the budget of "
                f"{self.prune_schedule.count_budget()} (Gaussians without weight in any training view go); "
                f"densifying up to it until step {self.strategy.refine_stop_iter}"
            )
        results = self.prune_schedule.step_post_backward(
            self.gauss_params, self.optimizers, self.strategy_state, step, self.prune_scores
        )
        for result in results:
            self._log_prune(result)
            restart = self.prune_schedule.restart_after(result.event)
            if restart == "reinitialize":
                self.reinitialize_gaussians()
            elif restart == "optimizer":
                restart_adam(self.gauss_params, self.optimizers)
        self.show_count()

    def load_state_dict(self, state_dict, **kwargs):  # type: ignore[override]  # splatfacto's signature
        """Load as splatfacto does; the viewer's count then shows the checkpoint's Gaussians (ns-viewer)."""
        result = super().load_state_dict(state_dict, **kwargs)
        self.show_count()
        return result

    def show_count(self) -> None:
        """The viewer's "Gaussian count", after densification, cuts and loads (never while rendering: every
        assignment makes the viewer render again, so only a changed count is set)."""
        if self.gaussian_count.value != self.num_points:
            self.gaussian_count.value = self.num_points

    def _prune(self, keep: Tensor, how: str, step: int) -> None:
        """Remove the Gaussians outside ``keep`` now (outside the schedule; tests and tools)."""
        before = self.num_points
        prune_gaussians(self.gauss_params, self.optimizers, self.strategy_state, keep)
        CONSOLE.log(f"step {step}: {how} kept {self.num_points} of {before} Gaussians")
        self.show_count()

    def _log_prune(self, result: PruneResult) -> None:
        criterion = self.config.prune_score
        CONSOLE.log(f"{result.describe()} (ranked by {criterion})")
        writer.put_scalar(name=f"student/pruned_to/{criterion}", scalar=result.after, step=result.step)

    def prune_scores(self) -> ScoreAndTops:
        """Each Gaussian's ``prune_score`` over the training views ``[N]`` and, for the intersection filter, the
        pixels where it is the top contributor (``PRUNE_SCORES``; this model provides the measures)."""
        return PRUNE_SCORES[self.config.prune_score](self, self.prune_schedule.top_filter)

    def top_contributions_and_weights(self) -> tuple[Tensor, Tensor]:
        """Per Gaussian, the training pixels where it is the top contributor and its summed blending weight ``[N]``."""
        return training_top_contributions(self, self._importance_views())

    def significance(self) -> Tensor:
        """LightGaussian's global significance over the training views ``[N]``."""
        return significance_scores(self, self._importance_views(), beta=self.config.significance_beta)

    def _importance_views(self) -> Cameras:
        if self.importance_views is None:
            raise RuntimeError(
                "pruning needs the training cameras; StudentPipeline provides them "
                "(model.set_importance_views(cameras))"
            )
        return self.importance_views

    def _render_blending(self, colors: Tensor, camera: Cameras) -> Tensor:
        """Render per-Gaussian ``colors`` ``[N, C]`` at full resolution, no background, no parameter gradients."""
        geometry = self.frozen_geometry(camera)
        render, _, _ = rasterization(
            **geometry, colors=colors, packed=False, sh_degree=None, backend=self.config.rasterizer
        )
        return render

    def blending_importance(self) -> Tensor:
        """Each Gaussian's blending weight summed over all training views and pixels ``[N]``."""
        cameras = self._importance_views()
        views = [cameras[i : i + 1] for i in range(len(cameras))]
        return accumulated_blending_weight(self._render_blending, self.num_points, views, device=self.device)

    @torch.no_grad()
    def reinitialize_gaussians(self) -> None:
        """Keep positions and DC colours, reset the rest as at initialisation, and restart Adam for every parameter."""
        n = self.num_points
        values = dict(self.gauss_params)
        if n > 3:  # the neighbour search needs three neighbours
            distances, _ = self.k_nearest_sklearn(self.means.detach(), 3)
            scale = torch.from_numpy(distances).to(self.device).mean(dim=-1, keepdim=True).clamp_min(1e-7)
            values["scales"] = torch.log(scale).repeat(1, 3)
        values["quats"] = torch.tensor([1.0, 0.0, 0.0, 0.0], device=self.device).repeat(n, 1)
        values["opacities"] = torch.full((n, 1), math.log(REINIT_OPACITY / (1 - REINIT_OPACITY)), device=self.device)
        values["features_rest"] = torch.zeros_like(self.features_rest)
        restart_adam(self.gauss_params, self.optimizers, values)

    # ------------------------------------------------------------------------------------------- viewer

    def get_outputs(self, camera: Cameras) -> dict[str, Tensor]:
        """Splatfacto's outputs; in eval (viewer) renders also the teachers and their blend when attached."""
        outputs = super().get_outputs(camera)
        if self.training and self.strategy.blur_split_area is not None and self.step < self.strategy.refine_stop_iter:
            self.info[BLUR_KEY] = self._top_contributions_in(camera)
        if not self.training and self.teachers is not None and self.show_teachers.value:
            outputs.update(self.teacher_outputs(camera, outputs["background"]))
        return outputs

    @torch.no_grad()
    def _top_contributions_in(self, camera: Cameras) -> Tensor:
        """Per Gaussian, the pixels of ``camera`` (at the training resolution) where it is the top contributor."""
        return hit_counts(**self.frozen_geometry(camera, self._get_downscale_factor()), top_contributor=True)[0]

    def teacher_outputs(self, camera: Cameras, background: Tensor) -> dict[str, Tensor]:
        """``teacher_<i>_<variant>`` and ``teacher_blend`` renders on the student's background."""
        assert self.teachers is not None
        renders = self.teachers.render(camera)
        outputs = {name: composite(r, background) for name, r in zip(self.teachers.names, renders, strict=True)}
        outputs["teacher_blend"] = composite(self.teachers.blend(renders), background)
        return outputs

    def get_image_metrics_and_images(self, outputs, batch) -> tuple[dict[str, float], dict[str, Tensor]]:
        metrics, images = super().get_image_metrics_and_images(outputs, batch)
        if "teacher_blend" in outputs:  # evaluation during training: ground truth | blend | student
            ground_truth = images["img"][:, : outputs["rgb"].shape[1]]
            images["img_teacher_blend"] = torch.cat([ground_truth, outputs["teacher_blend"], outputs["rgb"]], dim=1)
        return metrics, images
