"""Depth maps as supervision: nerfstudio's per-frame depth files, checked before training, fitted when relative.

The official Distilled-3DGS trains its teachers with an inverse-depth L1 against Depth-Anything-V2 maps, each fitted
per image (scale and offset in inverse depth) to the sparse COLMAP points, and leaves out images whose fit is an
outlier. Here the maps arrive by nerfstudio's own convention (``depth_file_path`` per frame of ``transforms.json``,
read by the nerfstudio-data dataparser; ``--depths-path`` of colmap; ``depth_unit_scale_factor``), through a
datamanager that reads, checks and fits every map when the data is loaded, so a missing, unreadable or mis-sized file
stops the run with one line naming it before the first step. Maps are either metric (depth in the dataparser's
units) or relative (an unknown affine function of inverse depth, as monocular estimators give). Each image's target
reaches the model as ``batch["depth_image"]``: z-depth in scene units ``[H, W, 1]``, 0 where there is none (the key
nerfstudio's own depth datasets use). The loss and the metric live here too, so teacher and student share them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager, FullImageDatamanagerConfig
from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.utils.rich_utils import CONSOLE
from PIL import Image
from torch import Tensor

from distilled3dgs_ns.errors import UserError

DEPTH_KEY = "depth_image"
DepthMaps = Literal["off", "metric", "relative"]
MIN_INVERSE_DEPTH = 1e-6
"""Fitted inverse depths at or below this are no depth (a relative map's far background can fit to <= 0)."""


class DepthMapError(UserError):
    """A depth map that cannot be used, or depth supervision asked for where the data has none."""


def read_depth_file(path: Path, width: int, height: int) -> np.ndarray:
    """A depth file's raw values ``[H, W]`` (float64): ``.npy`` or a 16/32-bit image, nerfstudio's formats. It must
    exist, be readable and have its image's size."""
    if not path.is_file():
        raise DepthMapError(f"depth map {path} is missing; write it, or remove depth_file_path from that frame")
    try:
        values = np.load(path) if path.suffix == ".npy" else np.asarray(Image.open(path))
    except (OSError, ValueError) as error:
        raise DepthMapError(f"depth map {path} is not readable ({error}); rewrite it as .npy or a 16-bit PNG") from None
    values = np.squeeze(np.asarray(values, dtype=np.float64))
    if values.shape != (height, width):
        raise DepthMapError(
            f"depth map {path} is {'x'.join(map(str, values.shape[::-1]))}, its image {width}x{height}; "
            "write it at the image's size"
        )
    return values


def project_points(points: Tensor, camera: Cameras) -> tuple[Tensor, Tensor, Tensor]:
    """Pixel rows, columns and z-depths of the ``points`` ``[P, 3]`` in front of one ``camera`` and inside its image."""
    c2w = camera.camera_to_worlds.reshape(3, 4).to(points)
    local = (points - c2w[:, 3]) @ c2w[:, :3]  # OpenGL axes: x right, y up, the camera looks down -z
    z = -local[:, 2]
    front = z > 1e-6
    fx, fy, cx, cy = (float(v) for v in (camera.fx, camera.fy, camera.cx, camera.cy))
    u = cx + fx * local[:, 0] / z.clamp_min(1e-6)
    v = cy - fy * local[:, 1] / z.clamp_min(1e-6)
    width, height = int(camera.width), int(camera.height)
    inside = front & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    return v[inside].long(), u[inside].long(), z[inside]


def fit_affine(x: Tensor, y: Tensor, tolerance: float = 0.02, trials: int = 256, seed: int = 0) -> tuple[float, float]:
    """``y ~ scale * x + offset`` (``y > 0``) by consensus: of ``trials`` lines through two random points, the one
    that most points follow within ``tolerance * y``, refitted by least squares on those. Sparse points hidden in
    this view sit behind the mapped surface, often half of them, all on one side: a plain or trimmed least-squares
    fit leans towards them, a consensus does not."""
    generator = torch.Generator().manual_seed(seed)
    x, y = x.detach().cpu().double(), y.detach().cpu().double()  # double: not on MPS
    pairs = torch.randint(0, len(x), (trials, 2), generator=generator)
    run = x[pairs[:, 0]] - x[pairs[:, 1]]
    scale = (y[pairs[:, 0]] - y[pairs[:, 1]]) / torch.where(run.abs() > 1e-12, run, torch.ones_like(run))
    offset = y[pairs[:, 0]] - scale * x[pairs[:, 0]]
    follows = (scale[:, None] * x + offset[:, None] - y).abs() <= tolerance * y
    inliers = follows[int((follows.sum(dim=1) * (run.abs() > 1e-12)).argmax())]
    for _ in range(2):
        if int(inliers.sum()) < 2:
            return 0.0, 0.0
        design = torch.stack([x[inliers], torch.ones_like(x[inliers])], dim=1)
        solution = torch.linalg.lstsq(design, y[inliers][:, None]).solution[:, 0]
        best_scale, best_offset = float(solution[0]), float(solution[1])
        inliers = (best_scale * x + best_offset - y).abs() <= tolerance * y
    return best_scale, best_offset


@dataclass
class DepthFit:
    """How one relative map turned into inverse depth: ``scale * value + offset``, from ``points`` sparse points."""

    scale: float
    offset: float
    points: int


def fit_relative_map(values: np.ndarray, camera: Cameras, points: Tensor, min_points: int) -> DepthFit | None:
    """The affine map from a relative map's values to inverse z-depth, fitted on the sparse ``points`` this
    ``camera`` sees where the map has a value; None where fewer than ``min_points`` are there or the fit is not
    increasing (a nearer point must not get a smaller inverse depth)."""
    rows, cols, z = project_points(points, camera)
    map_values = torch.from_numpy(values)[rows, cols].to(z)
    usable = torch.isfinite(map_values) & (map_values != 0)
    if int(usable.sum()) < min_points:
        return None
    scale, offset = fit_affine(map_values[usable], 1.0 / z[usable])
    return DepthFit(scale, offset, int(usable.sum())) if scale > 0 else None


def relative_to_depth(values: np.ndarray, fit: DepthFit) -> np.ndarray:
    """z-depth from a relative map and its fit; 0 where the map has no value or the fitted inverse depth is <= 0."""
    inverse = fit.scale * values + fit.offset
    usable = np.isfinite(values) & (values != 0) & (inverse > MIN_INVERSE_DEPTH)
    return np.where(usable, 1.0 / np.where(usable, inverse, 1.0), 0.0)


@dataclass
class DepthSettings:
    """What the datamanager does with the dataparser's depth files (see ``DepthDatamanagerConfig``)."""

    maps: DepthMaps = "off"
    min_points: int = 20
    outlier_ratio: float = 5.0


def depth_targets(outputs: DataparserOutputs, settings: DepthSettings) -> list[Tensor | None]:
    """Each image's z-depth target in scene units ``[H, W, 1]`` (0: none), or None for an image left out."""
    files = outputs.metadata.get("depth_filenames")
    if not files:
        raise DepthMapError(
            f"--pipeline.datamanager.depth-maps {settings.maps}: the dataparser found no depth maps; give every frame "
            "of transforms.json a depth_file_path and use nerfstudio-data (colmap: --depths-path DIR)"
        )
    cameras = outputs.cameras
    raw = [read_depth_file(Path(path), int(cameras.width[i]), int(cameras.height[i])) for i, path in enumerate(files)]
    if settings.maps == "metric":
        unit = float(outputs.metadata.get("depth_unit_scale_factor", 1.0)) * float(outputs.dataparser_scale)
        return [_as_target(values * unit) for values in raw]
    points = outputs.metadata.get("points3D_xyz")
    if points is None:
        raise DepthMapError(
            "relative depth maps are fitted to the dataparser's sparse points, and it gave none: add ply_file_path "
            "to transforms.json (ns-process-data writes sparse_pc.ply) or use colmap, or pass "
            "--pipeline.datamanager.depth-maps metric for metric maps"
        )
    fits = [fit_relative_map(values, cameras[i], points.float(), settings.min_points) for i, values in enumerate(raw)]
    fits = reject_outliers(fits, settings.outlier_ratio)
    targets: list[Tensor | None] = []
    for path, values, fit in zip(files, raw, fits, strict=True):
        if fit is None:
            CONSOLE.log(f"[bold yellow]Warning: depth map {path} has no usable fit to the sparse points; left out")
        targets.append(None if fit is None else _as_target(relative_to_depth(values, fit)))
    return targets


def reject_outliers(fits: list[DepthFit | None], ratio: float) -> list[DepthFit | None]:
    """Drop fits whose scale is more than ``ratio`` times off the median scale (the official reliability test)."""
    scales = [fit.scale for fit in fits if fit is not None]
    if not scales:
        return fits
    median = float(np.median(scales))
    return [fit if fit is not None and median / ratio <= fit.scale <= median * ratio else None for fit in fits]


def _as_target(depth: np.ndarray) -> Tensor:
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0)
    return torch.from_numpy(depth.astype(np.float32))[..., None]


class DepthMapDataset(InputDataset):
    """nerfstudio's image dataset plus each image's depth target under ``depth_image`` (where it has one)."""

    def __init__(
        self, dataparser_outputs: DataparserOutputs, scale_factor: float = 1.0, settings: DepthSettings | None = None
    ) -> None:
        super().__init__(dataparser_outputs, scale_factor)
        settings = settings or DepthSettings()
        self.depths = depth_targets(dataparser_outputs, settings) if settings.maps != "off" else []
        if scale_factor != 1.0:
            self.depths = [None if d is None else _resize_nearest(d, scale_factor) for d in self.depths]

    def get_metadata(self, data: dict) -> dict:
        depth = self.depths[data["image_idx"]] if self.depths else None
        return {} if depth is None else {DEPTH_KEY: depth}


def _resize_nearest(depth: Tensor, scale_factor: float) -> Tensor:
    height, width = (math.floor(n * scale_factor) for n in depth.shape[:2])
    return torch.nn.functional.interpolate(depth.permute(2, 0, 1)[None], size=(height, width), mode="nearest")[
        0
    ].permute(1, 2, 0)


@dataclass
class DepthDatamanagerConfig(FullImageDatamanagerConfig):
    """Splatfacto's full-image datamanager, with the dataparser's depth maps when asked for."""

    _target: type = field(default_factory=lambda: DepthDatamanager)
    depth_maps: DepthMaps = "off"
    """off: ignore depth files; metric: they hold z-depth in depth_unit_scale_factor units (the dataparser's option);
    relative: each is an unknown affine function of inverse depth (monocular estimators such as Depth-Anything-V2),
    fitted per image to the dataparser's sparse points."""
    depth_test_maps: Literal["same", "off", "metric", "relative"] = "same"
    """How the test split's depth maps are read, for the depth_abs_rel metric: same as depth_maps, or metric for
    ground-truth test depth (a depth sensor, a synthetic scene) beside relative training maps."""
    depth_min_points: int = 20
    """A relative map needs this many sparse points in view (where it has a value) to be fitted, or it is left out."""
    depth_outlier_ratio: float = 5.0
    """A relative map whose fitted scale is more than this factor off the median of all maps' is left out."""


class DepthDatamanager(FullImageDatamanager):
    """``FullImageDatamanager`` whose datasets carry depth targets (``depth_image``) when the config asks for them;
    a run saved with nerfstudio's plain ``FullImageDatamanagerConfig`` loads as before."""

    def depth_settings(self, split: Literal["train", "test"] = "train") -> DepthSettings:
        config = self.config
        maps = getattr(config, "depth_maps", "off")
        test_maps = getattr(config, "depth_test_maps", "same")
        return DepthSettings(
            maps=test_maps if split == "test" and test_maps != "same" else maps,
            min_points=getattr(config, "depth_min_points", 20),
            outlier_ratio=getattr(config, "depth_outlier_ratio", 5.0),
        )

    @property
    def has_depth(self) -> bool:
        """Whether the training images come with depth targets."""
        return bool(getattr(self.train_dataset, "depths", None))

    def create_train_dataset(self) -> DepthMapDataset:
        outputs = self.train_dataparser_outputs
        return DepthMapDataset(outputs, self.config.camera_res_scale_factor, self.depth_settings())

    def create_eval_dataset(self) -> DepthMapDataset:
        outputs = self.dataparser.get_dataparser_outputs(split=self.test_split)
        return DepthMapDataset(outputs, self.config.camera_res_scale_factor, self.depth_settings("test"))


def exponential_weight(start: float, end: float, progress: float) -> float:
    """``start`` at progress 0 to ``end`` at 1, log-linearly (the official depth-weight schedule); 0 when ``start``
    is (an ``end`` of 0 is taken as a vanishing 1e-12)."""
    if start <= 0:
        return 0.0
    progress = min(max(progress, 0.0), 1.0)
    return math.exp((1 - progress) * math.log(start) + progress * math.log(max(end, 1e-12)))


def downscale_depth(depth: Tensor, factor: int) -> Tensor:
    """A depth target ``[H, W, 1]`` at ``1 / factor`` of its size by nearest samples (averaging would blend a
    surface with the no-depth zeros around it), the size splatfacto's downscaled renders have."""
    if factor <= 1:
        return depth
    height, width = depth.shape[0] // factor, depth.shape[1] // factor
    return depth[factor // 2 :: factor, factor // 2 :: factor][:height, :width]


def inverse_depth_l1(rendered: Tensor, target: Tensor) -> Tensor:
    """Mean ``|1 / rendered - 1 / target|`` over the pixels with a target (z-depths ``[H, W, 1]``); 0 where none."""
    valid = target > 0
    if not bool(valid.any()):
        return rendered.sum() * 0.0
    inverse_rendered = 1.0 / rendered[valid].clamp_min(MIN_INVERSE_DEPTH)
    return (inverse_rendered - 1.0 / target[valid]).abs().mean()


def depth_abs_rel(rendered: Tensor, target: Tensor) -> float | None:
    """Mean absolute relative depth error ``|rendered - target| / target`` over the pixels with a target."""
    valid = target > 0
    if not bool(valid.any()):
        return None
    return float(((rendered[valid] - target[valid]).abs() / target[valid]).mean())
