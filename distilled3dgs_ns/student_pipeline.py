"""The student's pipeline: owns the teachers, checks them before training, and puts their blend into each batch.

Teachers are loaded only for training (``test_mode == "val"``, what ``ns-train`` uses), so ``ns-eval``,
``ns-viewer`` and ``ns-export`` of a trained student never need the teacher files. One step::

    datamanager --(camera, GT)--> pipeline --camera--> TeacherEnsemble --blend--> batch[TEACHER_TARGET]
    pipeline --(camera, batch)--> StudentModel.get_outputs / get_loss_dict

Teachers are frozen and training cameras fixed, so each training view's blend is rendered once and cached. A pseudo
view (LightGaussian) replaces the step's camera by a copy whose position is jittered; its only target is the blend,
which then stands in for the ground truth.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from nerfstudio.cameras import camera_utils
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils import profiler
from nerfstudio.utils.rich_utils import CONSOLE
from nerfstudio.viewer.viewer_elements import ViewerCheckbox, ViewerText
from torch import Tensor
from torch.cuda.amp.grad_scaler import GradScaler

from distilled3dgs_ns.student import TEACHER_TARGET, StudentModel, StudentModelConfig
from distilled3dgs_ns.teachers import (
    TeacherEnsemble,
    TeacherLoadError,
    check_frame,
    check_psnr,
    load_teacher,
    to_straight_alpha,
)


@dataclass
class StudentPipelineConfig(VanillaPipelineConfig):
    """Distillation pipeline: ``--pipeline.teachers t1/config.yml t2/config.yml ...``."""

    _target: type = field(default_factory=lambda: StudentPipeline)
    model: StudentModelConfig = field(default_factory=StudentModelConfig)
    teachers: list[Path] = field(default_factory=list)
    """config.yml of each trained teacher (one or more); needed for training only."""
    teacher_weights: list[float] | None = None
    """Blend weight of each teacher (normalised); default: the plain mean, as in the paper."""
    standard_teacher: int | None = None
    """Index of the geometry-loss reference; default: the first teacher whose variant is 'standard'."""
    teacher_min_psnr: float = 18.0
    """A teacher must render the student's training views at least this well (dB) or training stops; a teacher of
    another scene scores far lower. 0 disables the check."""
    teacher_check_views: int = 3
    """How many training views (evenly spaced) the PSNR check renders."""
    frame_tolerance: float = 1e-4
    """Largest allowed difference between a teacher's and the student's dataparser transform / relative scale."""
    cache_targets: bool = True
    """Render each training view's blend once and keep it (4 floats per pixel per training image)."""
    pseudo_view_rate: float = 0.0
    """Share of steps trained on a pseudo view (LightGaussian: jittered camera, teacher blend as the only target)."""
    pseudo_view_sigma: float = 0.1
    """Standard deviation of the camera-position jitter, in scene (post-dataparser) units."""
    pseudo_view_seed: int = 0
    pseudo_view_mode: Literal["jitter", "interpolate"] = "jitter"
    """Where pseudo views are: jitter, a training camera moved by pseudo_view_sigma (LightGaussian's); interpolate,
    a pose between a training camera and one of its pseudo_view_neighbours nearest (position and orientation
    interpolated), where the ground truth has no image and only the teachers supervise."""
    pseudo_view_neighbours: int = 4
    """Interpolation partners of a training camera: its nearest training cameras by position."""
    init_from: Path | None = None
    """config.yml of a trained splat (usually the standard teacher) whose Gaussians the student starts from instead
    of random or sparse points; prune it to a budget with the prune options (e.g. --pipeline.model.prune-count-at 0
    --pipeline.model.prune-count N). Training only, like the teachers."""


def interpolate_camera(first: Cameras, second: Cameras, t: float) -> Cameras:
    """A copy of ``first`` (one camera) at fraction ``t`` of the way to ``second``: positions interpolated linearly,
    orientations along the shortest rotation (nerfstudio's quaternion slerp); intrinsics and metadata are
    ``first``'s."""
    moved = copy.deepcopy(first)
    a, b = first.camera_to_worlds[0], second.camera_to_worlds[0].to(first.camera_to_worlds)
    quats = [camera_utils.quaternion_from_matrix(pose[:3, :3].double().cpu().numpy()) for pose in (a, b)]
    rotation = camera_utils.quaternion_matrix(camera_utils.quaternion_slerp(*quats, t))[:3, :3]
    moved.camera_to_worlds[0, :3, :3] = torch.from_numpy(rotation).to(a)
    moved.camera_to_worlds[0, :3, 3] = (1 - t) * a[:3, 3] + t * b[:3, 3]
    return moved


def jitter_camera(camera: Cameras, sigma: float, generator: torch.Generator) -> Cameras:
    """A copy of ``camera`` moved by ``N(0, sigma^2)`` per axis, same orientation and intrinsics."""
    jittered = copy.deepcopy(camera)
    offset = torch.randn(jittered.camera_to_worlds.shape[:-2] + (3,), generator=generator) * sigma
    jittered.camera_to_worlds[..., :3, 3] += offset.to(jittered.camera_to_worlds)
    return jittered


class StudentPipeline(VanillaPipeline):
    """VanillaPipeline plus the teacher ensemble (for training; in the viewer of a finished student when asked for)
    and the targets it hands to the student."""

    config: StudentPipelineConfig
    model: StudentModel

    def __init__(
        self,
        config: StudentPipelineConfig,
        device: str,
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler: GradScaler | None = None,
    ) -> None:
        super().__init__(config, device, test_mode, world_size, local_rank, grad_scaler)
        self.teachers: TeacherEnsemble | None = None
        self.targets: dict[int, Tensor] = {}
        self.rgb_ground_truth = False  # RGB images have a background baked in: teachers then render on their own
        self.pseudo_random = random.Random(config.pseudo_view_seed)
        self.pseudo_generator = torch.Generator().manual_seed(config.pseudo_view_seed)
        if test_mode != "val":
            self.offer_teachers_in_viewer()
            return
        self.model.set_importance_views(self.train_cameras().to(device))
        if config.init_from is not None:
            self.initialise_from(config.init_from, device)
        if config.teachers:
            self.rgb_ground_truth = self.training_view(0)[1].shape[-1] == 3
            self.teachers = self.load_teachers(device)
            self.model.attach_teachers(self.teachers)
        elif self.needs_teachers:
            raise ValueError(
                "the student needs teachers: pass --pipeline.teachers t1/config.yml [t2/config.yml ...] "
                "(to train without distillation, set --pipeline.model.kd-weight 0 "
                "--pipeline.model.structure-weight 0 --pipeline.pseudo-view-rate 0)"
            )

    def offer_teachers_in_viewer(self) -> None:
        """A finished student's viewer (ns-viewer) offers its teachers: loaded only when the box is ticked, so ns-eval
        and ns-export never need them; where a teacher run is gone, the panel says which."""
        if not self.config.teachers:
            return
        missing = [str(path) for path in self.config.teachers if not Path(path).expanduser().is_file()]
        total = len(self.config.teachers)
        about = f"{len(missing)} of {total} teachers not found: {', '.join(missing)}" if missing else "not loaded"
        self.teacher_info = ViewerText(name="Teachers", default_value=about, disabled=True)
        self.teacher_loader = ViewerCheckbox(
            name="Load the teachers",
            default_value=False,
            disabled=bool(missing),
            cb_hook=self._load_teachers_for_viewer,
            hint="Loads the teacher runs this student learned from, for side-by-side outputs",
        )

    def _load_teachers_for_viewer(self, box: ViewerCheckbox) -> None:
        if not box.value or self.model.teachers is not None:
            return
        self.teacher_info.value = "loading..."
        self.teachers = TeacherEnsemble.load(
            self.config.teachers, self.device, self.config.teacher_weights, self.config.standard_teacher
        )
        self.model.attach_teachers(self.teachers)
        self.teacher_info.value = (
            ", ".join(f"{teacher.variant} {teacher.model.num_points}" for teacher in self.teachers.teachers)
            + " Gaussians"
        )
        box.disabled = True

    @property
    def needs_teachers(self) -> bool:
        return self.renders_teachers or self.config.model.structure_weight > 0

    @property
    def renders_teachers(self) -> bool:
        """Whether a training step uses the teachers' renders (the geometry loss reads their Gaussians only)."""
        model = self.config.model
        return max(model.kd_weight, model.kd_weight_final, self.config.pseudo_view_rate) > 0

    def train_cameras(self) -> Cameras:
        """The training cameras as the datamanager serves them (after any undistortion of the cached images)."""
        getattr(self.datamanager, "cached_train", None)  # FullImageDatamanager fixes intrinsics on first access
        return getattr(self.datamanager, "train_cameras", self.datamanager.train_dataset.cameras)

    def training_view(self, index: int) -> tuple[Cameras, Tensor]:
        """Training camera ``index`` and its ground-truth image."""
        cached = getattr(self.datamanager, "cached_train", None)
        image = cached[index]["image"] if cached is not None else self.datamanager.train_dataset[index]["image"]
        return self.train_cameras()[index : index + 1].to(self.device), image

    def load_teachers(self, device: str) -> TeacherEnsemble:
        """Load and check every teacher; raises ``TeacherLoadError`` naming the file and the fix."""
        cfg = self.config
        teachers = TeacherEnsemble.load(cfg.teachers, device, cfg.teacher_weights, cfg.standard_teacher)
        outputs = self.datamanager.train_dataparser_outputs
        last = len(self.datamanager.train_dataset) - 1
        spacing = last / max(cfg.teacher_check_views - 1, 1)
        views = [self.training_view(i) for i in sorted({round(k * spacing) for k in range(cfg.teacher_check_views)})]
        for index, teacher in enumerate(teachers.teachers):
            check_frame(teacher, outputs.dataparser_transform, outputs.dataparser_scale, cfg.frame_tolerance)
            psnr = check_psnr(teacher, views, cfg.teacher_min_psnr) if cfg.teacher_min_psnr > 0 else float("nan")
            CONSOLE.log(
                f"teacher {index} ({teacher.variant}, step {teacher.step}): {teacher.model.num_points} Gaussians, "
                f"{psnr:.2f} dB on {len(views)} training views; {teacher.config_path}"
            )
        return teachers

    def initialise_from(self, config_path: Path, device: str) -> None:
        """Start the student from the Gaussians of the trained splat at ``config_path`` (same scene and frame)."""
        source = load_teacher(config_path, device)
        outputs = self.datamanager.train_dataparser_outputs
        check_frame(source, outputs.dataparser_transform, outputs.dataparser_scale, self.config.frame_tolerance)
        theirs = source.model.gauss_params["features_rest"].shape[1]
        ours = self.model.gauss_params["features_rest"].shape[1]
        if theirs != ours:
            raise TeacherLoadError(
                source.config_path,
                f"has {theirs + 1} SH coefficients per colour, the student {ours + 1}",
                "give the student the same --pipeline.model.sh-degree as the splat it starts from",
            )
        self.model.load_gaussians({k: v.detach().to(device) for k, v in source.model.gauss_params.items()})
        CONSOLE.log(f"student: starts from the {source.model.num_points} Gaussians of {source.config_path}")

    def pseudo_camera(self, camera: Cameras) -> Cameras:
        """A pseudo view near this step's training camera (see ``pseudo_view_mode``)."""
        if self.config.pseudo_view_mode == "jitter":
            return jitter_camera(camera, self.config.pseudo_view_sigma, self.pseudo_generator)
        cameras = self.train_cameras()
        positions = cameras.camera_to_worlds[:, :3, 3]
        here = camera.camera_to_worlds[0, :3, 3].to(positions)
        order = torch.argsort((positions - here).norm(dim=-1))[1 : 1 + self.config.pseudo_view_neighbours]
        partner = int(order[self.pseudo_random.randrange(len(order))]) if len(order) else 0
        t = self.pseudo_random.uniform(0.25, 0.75)
        return interpolate_camera(camera, cameras[partner : partner + 1].to(camera.device), t)

    def teacher_target(self, camera: Cameras) -> Tensor:
        """Straight-alpha RGBA blend of the teachers for ``camera``, cached per training view."""
        assert self.teachers is not None
        cam_idx = (camera.metadata or {}).get("cam_idx")
        if cam_idx is not None and cam_idx in self.targets:
            return self.targets[cam_idx]
        target = to_straight_alpha(self.teachers.render_blend(camera, self.rgb_ground_truth))
        if cam_idx is not None and self.config.cache_targets:
            self.targets[cam_idx] = target
        return target

    @profiler.time_function
    def get_train_loss_dict(self, step: int):
        camera, batch = self.datamanager.next_train(step)
        if self.teachers is not None and self.renders_teachers:
            if self.pseudo_random.random() < self.config.pseudo_view_rate:
                camera = self.pseudo_camera(camera)
                batch = {"image": to_straight_alpha(self.teachers.render_blend(camera, self.rgb_ground_truth))}
            else:
                batch[TEACHER_TARGET] = self.teacher_target(camera)
        model_outputs = self._model(camera)
        metrics_dict = self.model.get_metrics_dict(model_outputs, batch)
        loss_dict = self.model.get_loss_dict(model_outputs, batch, metrics_dict)
        return model_outputs, loss_dict, metrics_dict
