"""Trained teachers for the student: load them from their ``config.yml``, check they fit, render and blend.

``eval_setup`` is a poor fit for teachers (CWD-relative paths, builds a whole datamanager, picks its own device,
``sys.exit`` on a missing checkpoint), so a teacher is loaded here from its ``config.yml`` alone: the model is built
from a tiny random point set and its Gaussians are read from the newest checkpoint next to that file.

Targets take the form of the ground truth, so the student treats both alike:

* RGBA ground truth (e.g. Blender data with ``--alpha-color None``): teachers render *premultiplied RGBA* (colour on
  black, plus accumulation). Blending is linear, so the blend composited on a background equals the mean of the
  teachers' renders on that background; the student composites it on whatever background it trains with (random
  per step for splatfacto), exactly as it composites its RGBA ground truth.
* RGB ground truth (a background already baked in, e.g. Blender's default white): a teacher trained on a fixed
  background colour reproduces the images only *with* that colour, so it is baked into its render (alpha 1). A
  teacher trained on random backgrounds had to make such images opaque itself, and stays premultiplied.

A teacher is a plain object, never an ``nn.Module`` child of the student, so it is not in the student's checkpoints,
``.train()`` never flips it, and the viewer does not walk into it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.models.splatfacto import SplatfactoModelConfig
from nerfstudio.utils.colors import get_color
from torch import Tensor

from distilled3dgs_ns.checkpoints import CHECKPOINT_GLOB, check_finite, gaussian_state, newest_checkpoint
from distilled3dgs_ns.errors import TEACHER_CHECK_OPTION, UserError
from distilled3dgs_ns.names import DATAPARSER_TRANSFORMS, STUDENT_METHOD
from distilled3dgs_ns.portable_splatfacto import PortableSplatfactoModel, PortableSplatfactoModelConfig

PLACEHOLDER_POINTS = 4
"""Random points the teacher model is built with before its checkpoint replaces them (KNN init needs > 3)."""
CHECK_BACKGROUND = (0.5, 0.5, 0.5)
"""Background both the teacher render and an RGBA ground truth are composited on for the PSNR check."""
STANDARD_VARIANT = "standard"


class TeacherLoadError(UserError):
    """A teacher cannot be used; the message names the offending file and how to fix it."""

    def __init__(self, path: Path, problem: str, fix: str) -> None:
        super().__init__(f"teacher {path}: {problem}\n  fix: {fix}")
        self.path = path


@dataclass
class Teacher:
    """One frozen, eval-mode teacher model and where it came from."""

    config_path: Path
    model: PortableSplatfactoModel
    variant: str
    step: int
    background: Tensor | None = None
    """The fixed background colour it was trained on; None for random backgrounds."""

    @property
    def name(self) -> str:
        """For messages: variant and file."""
        return f"{self.variant} ({self.config_path})"

    @torch.no_grad()
    def render(self, camera: Cameras, own_background: bool = False) -> Tensor:
        """Premultiplied RGBA ``[H, W, 4]`` of one camera at its full resolution; with ``own_background``, composited
        on its fixed training background (alpha 1), the form of RGB ground truth (see the module docstring)."""
        outputs = self.model.get_outputs(camera.to(self.model.device))  # built with a black background
        rgba = torch.cat([outputs["rgb"], outputs["accumulation"]], dim=-1)
        if own_background and self.background is not None:
            rgb = composite(rgba, self.background.to(rgba))
            rgba = torch.cat([rgb, torch.ones_like(rgba[..., 3:])], dim=-1)
        return rgba


def composite(premultiplied: Tensor, background: Tensor) -> Tensor:
    """RGB ``[H, W, 3]`` of a premultiplied RGBA image over ``background`` (``[3]`` or ``[H, W, 3]``)."""
    return (premultiplied[..., :3] + (1.0 - premultiplied[..., 3:]) * background).clamp(0.0, 1.0)


def to_straight_alpha(premultiplied: Tensor) -> Tensor:
    """Straight-alpha RGBA, the form ground-truth RGBA images have, so splatfacto composites it the same way."""
    alpha = premultiplied[..., 3:]
    rgb = torch.where(alpha > 0, premultiplied[..., :3] / alpha.clamp_min(1e-8), 0.0).clamp(0.0, 1.0)
    return torch.cat([rgb, alpha], dim=-1)


# ------------------------------------------------------------------------------------------------------- loading


def _portable(model_config: SplatfactoModelConfig) -> PortableSplatfactoModelConfig:
    """The config as a device-agnostic splatfacto (plain splatfacto teachers are CUDA-only otherwise)."""
    if isinstance(model_config, PortableSplatfactoModelConfig):
        return model_config
    shared = {f.name: getattr(model_config, f.name) for f in dataclasses.fields(SplatfactoModelConfig) if f.init}
    shared.pop("_target")
    return PortableSplatfactoModelConfig(**shared)


def load_teacher(config_path: Path | str, device: torch.device | str) -> Teacher:
    """Load a trained splatfacto-family model from its ``config.yml`` (from any working directory) onto ``device``.

    Only the Gaussians are read (``_model.gauss_params.*`` of the newest checkpoint beside the config): that is all
    an eval-mode render uses, so camera-optimiser or bilateral-grid state of any size is irrelevant.
    """
    path = Path(config_path).expanduser().resolve()
    train_fix = (
        "pass the config.yml that `ns-train distilled3dgs-teacher` wrote "
        "(outputs/<experiment>/<method>/<timestamp>/config.yml)"
    )
    if not path.is_file():
        raise TeacherLoadError(path, "file not found", train_fix)
    try:
        config = yaml.load(path.read_text(), Loader=yaml.Loader)
    except (yaml.YAMLError, ImportError, AttributeError, TypeError) as err:
        raise TeacherLoadError(path, f"not a readable nerfstudio config ({err})", train_fix) from err
    model_config = getattr(getattr(config, "pipeline", None), "model", None)
    if getattr(config, "method_name", None) == STUDENT_METHOD:
        raise TeacherLoadError(
            path, "is a distilled student, not a teacher", "pass the config.yml of a `distilled3dgs-teacher` run"
        )
    if not isinstance(model_config, SplatfactoModelConfig):
        kind = f"{type(model_config).__name__} ({getattr(config, 'method_name', 'unknown method')})"
        raise TeacherLoadError(
            path,
            f"is a {kind} model, not a Gaussian-splatting (splatfacto-family) model",
            "train the teachers with `ns-train distilled3dgs-teacher` (or splatfacto) and pass their config.yml",
        )

    model_dir = path.parent / getattr(config, "relative_model_dir", Path("nerfstudio_models"))
    checkpoint = newest_checkpoint(model_dir)
    if checkpoint is None:
        raise TeacherLoadError(
            path,
            f"no checkpoint ({CHECKPOINT_GLOB}) in {model_dir}",
            "let the teacher train until its first save (see --steps-per-save), or pass the right config.yml",
        )
    try:
        state = torch.load(checkpoint, map_location="cpu")
    except Exception as err:  # torch raises many types for a corrupt or foreign file
        raise TeacherLoadError(checkpoint, f"unreadable checkpoint ({err})", "retrain or re-copy the teacher") from err
    gaussians = gaussian_state(state.get("pipeline", {}))
    if "means" not in gaussians:
        raise TeacherLoadError(checkpoint, "holds no Gaussians (gauss_params.*)", train_fix)
    check_finite(gaussians, f"teacher {checkpoint}")

    trained_background = model_config.background_color
    model_config = dataclasses.replace(
        _portable(model_config), random_init=True, num_random=PLACEHOLDER_POINTS, background_color="black"
    )
    scene_box = SceneBox(aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]))
    model = model_config.setup(scene_box=scene_box, num_train_data=1, metadata={}, device=device)
    # splatfacto resizes gauss_params to the checkpoint's count
    model.load_state_dict({f"gauss_params.{name}": value for name, value in gaussians.items()}, strict=False)
    model.eval().requires_grad_(False).to(device)
    return Teacher(
        config_path=path,
        model=model,
        variant=getattr(model_config, "variant", STANDARD_VARIANT),
        step=int(state.get("step", -1)),
        background=None if trained_background == "random" else get_color(trained_background).to(device),
    )


# ---------------------------------------------------------------------------------------------------- validation


def check_frame(teacher: Teacher, transform: Tensor, scale: float, tolerance: float = 1e-4) -> None:
    """Raise unless the teacher's dataparser transform and scale equal the student's (same scene, same frame)."""
    path = teacher.config_path.parent / DATAPARSER_TRANSFORMS
    if not path.is_file():
        raise TeacherLoadError(
            path,
            "missing (ns-train writes it next to config.yml), so the teacher's coordinate frame is unknown",
            "copy the teacher's whole output folder, not just config.yml and the checkpoint",
        )
    saved = json.loads(path.read_text())
    teacher_transform = torch.tensor(saved["transform"], dtype=torch.float32)
    student_transform = transform.detach().float().cpu().reshape(teacher_transform.shape)
    transform_gap = float((teacher_transform - student_transform).abs().max())
    if transform_gap > tolerance or not math.isclose(saved["scale"], scale, rel_tol=tolerance):
        raise TeacherLoadError(
            teacher.config_path,
            "was trained on a different scene or in a different coordinate frame: dataparser scale "
            f"{saved['scale']:.6g} vs the student's {scale:.6g}, transforms differ by up to {transform_gap:.3g}",
            "train teachers and student on the same data with the same dataparser options "
            "(--orientation-method, --center-method, --auto-scale-poses, --scale-factor, ...)",
        )


def _as_float_image(image: Tensor) -> Tensor:
    return image.float() / 255.0 if image.dtype == torch.uint8 else image.float()


def view_psnr(teacher: Teacher, views: Sequence[tuple[Cameras, Tensor]]) -> float:
    """Mean PSNR of the teacher's renders of ``(camera, ground truth [H, W, 3|4])`` views."""
    background = torch.tensor(CHECK_BACKGROUND, device=teacher.model.device)
    scores = []
    for camera, image in views:
        image = _as_float_image(image).to(background.device)
        has_alpha = image.shape[-1] == 4
        if has_alpha:
            image = composite(torch.cat([image[..., :3] * image[..., 3:], image[..., 3:]], dim=-1), background)
        rendered = composite(teacher.render(camera, own_background=not has_alpha), background)
        mse = torch.mean((rendered - image[..., :3]) ** 2).clamp_min(1e-10)
        scores.append(float(-10.0 * torch.log10(mse)))
    return sum(scores) / len(scores)


def check_psnr(teacher: Teacher, views: Sequence[tuple[Cameras, Tensor]], min_psnr: float) -> float:
    """Raise unless the teacher reproduces the student's training views; returns the PSNR."""
    psnr = view_psnr(teacher, views)
    if psnr < min_psnr:
        raise TeacherLoadError(
            teacher.config_path,
            f"renders {len(views)} of the student's training views at {psnr:.1f} dB PSNR against their ground "
            f"truth (need >= {min_psnr:g} dB): it was trained on another scene (or barely trained)",
            f"pass teachers trained on the student's --data, or lower {TEACHER_CHECK_OPTION}",
        )
    return psnr


# ------------------------------------------------------------------------------------------------------ ensemble


class TeacherEnsemble:
    """Frozen teachers held in a plain list (outside any module tree), rendered without gradient and blended."""

    def __init__(
        self, teachers: Sequence[Teacher], weights: Sequence[float] | None = None, standard: int | None = None
    ) -> None:
        if not teachers:
            raise ValueError("a TeacherEnsemble needs at least one teacher")
        weights = [1.0] * len(teachers) if weights is None else [float(w) for w in weights]
        if len(weights) != len(teachers):
            raise ValueError(f"{len(weights)} teacher weights given for {len(teachers)} teachers")
        if any(w < 0 or not math.isfinite(w) for w in weights) or sum(weights) <= 0:
            raise ValueError(f"teacher weights must be finite, non-negative and not all zero, got {weights}")
        if standard is not None and not 0 <= standard < len(teachers):
            raise ValueError(f"standard teacher index {standard} is out of range for {len(teachers)} teachers")
        self.teachers = list(teachers)
        self.weights = [w / sum(weights) for w in weights]
        self._standard = standard

    @classmethod
    def load(
        cls,
        config_paths: Sequence[Path | str],
        device: torch.device | str,
        weights: Sequence[float] | None = None,
        standard: int | None = None,
    ) -> TeacherEnsemble:
        """Load every teacher (see ``load_teacher``); raises ``TeacherLoadError`` on the first that fails."""
        resolved = [Path(path).expanduser().resolve() for path in config_paths]
        for path in sorted({path for path in resolved if resolved.count(path) > 1}):
            warnings.warn(
                f"teacher {path} is listed {resolved.count(path)} times: it weighs that much more in the blend",
                stacklevel=2,
            )
        return cls([load_teacher(path, device) for path in resolved], weights, standard)

    def __len__(self) -> int:
        return len(self.teachers)

    @property
    def names(self) -> list[str]:
        """Output keys for the viewer: ``teacher_<i>_<variant>``."""
        return [f"teacher_{i}_{teacher.variant}" for i, teacher in enumerate(self.teachers)]

    @property
    def standard(self) -> Teacher:
        """The teacher the geometry loss compares with: chosen explicitly, else the first 'standard' variant."""
        if self._standard is not None:
            return self.teachers[self._standard]
        for teacher in self.teachers:
            if teacher.variant == STANDARD_VARIANT:
                return teacher
        raise ValueError(
            f"no teacher has variant {STANDARD_VARIANT!r} ({', '.join(t.name for t in self.teachers)}); "
            "choose the geometry reference with --pipeline.standard-teacher INDEX"
        )

    def render(self, camera: Cameras, own_background: bool = False) -> list[Tensor]:
        """Each teacher's premultiplied RGBA ``[H, W, 4]`` (see ``Teacher.render``)."""
        return [teacher.render(camera, own_background) for teacher in self.teachers]

    def blend(self, renders: Sequence[Tensor]) -> Tensor:
        """Weighted mean of premultiplied renders (the paper's target is the plain mean)."""
        return sum(w * r for w, r in zip(self.weights, renders, strict=True))

    def render_blend(self, camera: Cameras, own_background: bool = False) -> Tensor:
        """The blended premultiplied RGBA ``[H, W, 4]`` of ``camera``."""
        return self.blend(self.render(camera, own_background))
