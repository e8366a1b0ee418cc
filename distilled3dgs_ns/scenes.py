"""The project's embedded default scene: generated here, so it needs no download and carries no licence question.

A few procedurally textured primitives on a ground disc, ray-cast analytically with numpy (closest hit, Lambert
shading with hard shadows from one directional light plus ambient, jittered supersampling), and written in
nerfstudio's Blender format so that ``ns-train <method> --data DIR blender-data`` loads it as it is: RGBA PNGs with
alpha 0 where rays miss (composited over white by the dataparser), ``transforms_{train,val,test}.json`` with
``camera_angle_x`` and camera-to-world matrices in OpenGL/Blender axes (camera looks down -Z, +Y up), world +Z up.
The geometry lies inside the dataparser's fixed scene box [-1.5, 1.5]^3 (scale factor 1). The renderer is independent
of any Gaussian rasteriser, so the images are a ground truth that no method under test had a hand in.

Command line: ``python -m distilled3dgs_ns.scenes --output-dir DIR [--image-size N ...]``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import tyro
from PIL import Image

FORMAT_VERSION = 1
"""Bump whenever the geometry, textures, lighting, cameras or file layout change, so old folders are rewritten."""
META_FILENAME = "scene_meta.json"
SPLITS = ("train", "val", "test")
NERFSTUDIO_TRANSFORMS = "transforms.json"
"""The nerfstudio-data file written with ``depth_maps`` (the Blender files stay beside it)."""
SPARSE_POINTS = "sparse_pc.ply"
SPARSE_POINTS_PER_VIEW = 100
"""Surface points sampled from each training view's hits: a sparse cloud like SfM's, to fit relative depth to."""
MILLIMETRES = 1000.0
"""Depth PNGs hold millimetres (nerfstudio's default depth_unit_scale_factor is 1e-3)."""

LIGHT_DIR = np.array([0.45, -0.35, 0.82]) / np.linalg.norm([0.45, -0.35, 0.82])
"""Unit vector towards the directional light (world axes, +Z up)."""
AMBIENT = 0.3
DIFFUSE = 0.7
_EPS = 1e-6
"""Smallest accepted ray parameter, so that a ray leaving a surface does not hit that surface again."""
_SHADOW_OFFSET = 1e-4


@dataclass(frozen=True)
class EmbeddedSceneConfig:
    """Everything that determines the written files; stored in ``scene_meta.json`` to decide whether to rewrite."""

    image_size: int = 100
    """Width and height of the square images in pixels."""
    n_train: int = 48
    n_val: int = 6
    n_test: int = 8
    supersample: int = 3
    """Jittered subpixels per pixel along each axis (3 -> 9 rays per pixel); anti-aliases the texture edges."""
    seed: int = 0
    """Seeds the training camera placement and the subpixel jitter; same seed, same bytes."""
    camera_distance: float = 4.0
    """Distance of every camera from the origin."""
    camera_angle_x: float = 0.6911112070083618
    """Horizontal field of view in radians, the value of the NeRF synthetic scenes."""
    min_elevation_deg: float = 15.0
    max_elevation_deg: float = 70.0
    """Cameras lie on the band of the upper hemisphere between these elevations above the XY plane."""
    depth_maps: bool = False
    """Also write every view's exact depth map (16-bit PNG in millimetres, nerfstudio's convention), sparse surface
    points seen by the training views (sparse_pc.ply, as ns-process-data writes them) and a nerfstudio-data
    transforms.json naming both, so ``nerfstudio-data`` loads the scene with its depth maps."""

    def __post_init__(self) -> None:
        if min(self.image_size, self.supersample, self.n_train, self.n_val, self.n_test) < 1:
            raise ValueError(
                "image_size, supersample and the view counts must be positive (nerfstudio reads one image per split)"
            )
        if not 0.0 <= self.min_elevation_deg <= self.max_elevation_deg < 90.0:
            raise ValueError("need 0 <= min_elevation_deg <= max_elevation_deg < 90")


class Primitive(ABC):
    """A textured solid or surface: ray intersection, surface normal and albedo, all vectorised over points."""

    name: str

    @abstractmethod
    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        """Ray parameter ``t`` of the first hit beyond ``_EPS`` for [N,3] origins and unit directions; inf on miss."""

    @abstractmethod
    def normal(self, points: np.ndarray) -> np.ndarray:
        """Outward unit normals [N,3] at [N,3] points on the surface."""

    @abstractmethod
    def albedo(self, points: np.ndarray) -> np.ndarray:
        """Diffuse colour [N,3] in [0,1] at [N,3] points on the surface."""


def _rotation_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rotation_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _two_tone(mask: np.ndarray, color_a: tuple[float, ...], color_b: tuple[float, ...]) -> np.ndarray:
    return np.where(mask[:, None], np.asarray(color_a), np.asarray(color_b))


def _first_positive(t_near: np.ndarray, t_far: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The nearer of two roots in front of the origin (the far one when the origin is inside), inf otherwise."""
    t = np.where(t_near > _EPS, t_near, np.where(t_far > _EPS, t_far, np.inf))
    return np.where(valid, t, np.inf)


@dataclass(frozen=True)
class Sphere(Primitive):
    """A sphere whose texture lives in a rotated frame, so that its poles need not face the cameras."""

    name: str
    center: tuple[float, float, float]
    radius: float
    texture_rotation: np.ndarray
    """Local-to-world rotation of the texture frame."""
    pattern: str
    """``"checker"``: latitude-longitude checker; ``"dots"``: polka dots from a 3-D lattice of balls."""
    color_a: tuple[float, float, float]
    color_b: tuple[float, float, float]

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        oc = origins - np.asarray(self.center)
        b = np.einsum("ij,ij->i", oc, dirs)
        disc = b * b - (np.einsum("ij,ij->i", oc, oc) - self.radius**2)
        root = np.sqrt(np.maximum(disc, 0.0))
        return _first_positive(-b - root, -b + root, disc >= 0.0)

    def normal(self, points: np.ndarray) -> np.ndarray:
        return (points - np.asarray(self.center)) / self.radius

    def albedo(self, points: np.ndarray) -> np.ndarray:
        local = self.normal(points) @ self.texture_rotation  # rows: R^T n
        if self.pattern == "checker":
            lon = np.arctan2(local[:, 1], local[:, 0])
            lat = np.arcsin(np.clip(local[:, 2], -1.0, 1.0))
            cells = np.floor(lon / (2 * math.pi) * 16) + np.floor((lat / math.pi + 0.5) * 8)
            return _two_tone(cells % 2 == 0, self.color_a, self.color_b)
        lattice = 0.12
        offset = local * self.radius / lattice
        in_dot = np.linalg.norm(offset - np.round(offset), axis=1) < 0.3
        return _two_tone(in_dot, self.color_a, self.color_b)


@dataclass(frozen=True)
class Box(Primitive):
    """A box rotated about the vertical axis, with solid diagonal stripes that wrap over its faces."""

    name: str
    center: tuple[float, float, float]
    half_size: tuple[float, float, float]
    yaw: float
    stripe_period: float
    color_a: tuple[float, float, float]
    color_b: tuple[float, float, float]

    def _to_local(self, points: np.ndarray) -> np.ndarray:
        return (points - np.asarray(self.center)) @ _rotation_z(self.yaw)

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        rot = _rotation_z(self.yaw)
        local_o, local_d = self._to_local(origins), dirs @ rot
        local_d = np.where(np.abs(local_d) < 1e-12, 1e-12, local_d)
        half = np.asarray(self.half_size)
        t0, t1 = (-half - local_o) / local_d, (half - local_o) / local_d
        t_near = np.minimum(t0, t1).max(axis=1)
        t_far = np.maximum(t0, t1).min(axis=1)
        return _first_positive(t_near, t_far, t_near <= t_far)

    def normal(self, points: np.ndarray) -> np.ndarray:
        scaled = self._to_local(points) / np.asarray(self.half_size)
        axis = np.abs(scaled).argmax(axis=1)
        local_n = np.zeros_like(points)
        rows = np.arange(len(points))
        local_n[rows, axis] = np.sign(scaled[rows, axis])
        return local_n @ _rotation_z(self.yaw).T

    def albedo(self, points: np.ndarray) -> np.ndarray:
        phase = self._to_local(points).sum(axis=1) / self.stripe_period
        return _two_tone(np.floor(phase) % 2 == 0, self.color_a, self.color_b)


@dataclass(frozen=True)
class Cylinder(Primitive):
    """A capped vertical cylinder: helical stripes on the side, concentric rings on the caps."""

    name: str
    center_xy: tuple[float, float]
    z_min: float
    z_max: float
    radius: float
    color_a: tuple[float, float, float]
    color_b: tuple[float, float, float]

    def _local(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """x and y relative to the axis and z relative to the middle height."""
        return points[:, 0] - self.center_xy[0], points[:, 1] - self.center_xy[1], points[:, 2]

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        ox, oy, oz = self._local(origins)
        dx, dy, dz = dirs[:, 0], dirs[:, 1], dirs[:, 2]
        a = np.maximum(dx * dx + dy * dy, 1e-12)
        b = ox * dx + oy * dy
        disc = b * b - a * (ox * ox + oy * oy - self.radius**2)
        root = np.sqrt(np.maximum(disc, 0.0))
        candidates = []
        for t in ((-b - root) / a, (-b + root) / a):
            z = oz + t * dz
            candidates.append(np.where((disc >= 0) & (t > _EPS) & (z >= self.z_min) & (z <= self.z_max), t, np.inf))
        safe_dz = np.where(np.abs(dz) < 1e-12, 1e-12, dz)
        for z_cap in (self.z_min, self.z_max):
            t = (z_cap - oz) / safe_dz
            inside = (ox + t * dx) ** 2 + (oy + t * dy) ** 2 <= self.radius**2
            candidates.append(np.where(inside & (t > _EPS), t, np.inf))
        return np.min(candidates, axis=0)

    def _on_cap(self, points: np.ndarray) -> np.ndarray:
        x, y, z = self._local(points)
        half_height = 0.5 * (self.z_max - self.z_min)
        return np.abs(z - 0.5 * (self.z_max + self.z_min)) / half_height >= np.hypot(x, y) / self.radius

    def normal(self, points: np.ndarray) -> np.ndarray:
        x, y, z = self._local(points)
        side = np.stack([x, y, np.zeros_like(x)], axis=1) / self.radius
        cap = np.zeros_like(points)
        cap[:, 2] = np.sign(z - 0.5 * (self.z_max + self.z_min))
        return np.where(self._on_cap(points)[:, None], cap, side)

    def albedo(self, points: np.ndarray) -> np.ndarray:
        x, y, z = self._local(points)
        helix = 10 * np.arctan2(y, x) / (2 * math.pi) + z / 0.15
        rings = np.hypot(x, y) / 0.05
        phase = np.where(self._on_cap(points), rings, helix)
        return _two_tone(np.floor(phase) % 2 == 0, self.color_a, self.color_b)


@dataclass(frozen=True)
class Disc(Primitive):
    """The horizontal ground disc (one-sided: the cameras are all above it), with a polar checker."""

    name: str
    height: float
    radius: float
    color_a: tuple[float, float, float]
    color_b: tuple[float, float, float]

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        dz = np.where(np.abs(dirs[:, 2]) < 1e-12, 1e-12, dirs[:, 2])
        t = (self.height - origins[:, 2]) / dz
        hit = origins[:, :2] + t[:, None] * dirs[:, :2]
        return np.where((t > _EPS) & (np.einsum("ij,ij->i", hit, hit) <= self.radius**2), t, np.inf)

    def normal(self, points: np.ndarray) -> np.ndarray:
        return np.broadcast_to(np.array([0.0, 0.0, 1.0]), points.shape).copy()

    def albedo(self, points: np.ndarray) -> np.ndarray:
        rings = np.floor(np.hypot(points[:, 0], points[:, 1]) / 0.15)
        sectors = np.floor(np.arctan2(points[:, 1], points[:, 0]) / (2 * math.pi) * 24)
        return _two_tone((rings + sectors) % 2 == 0, self.color_a, self.color_b)


GROUND_HEIGHT = -0.6
PRIMITIVES: tuple[Primitive, ...] = (
    Disc("ground", GROUND_HEIGHT, 1.2, (0.85, 0.8, 0.68), (0.4, 0.45, 0.55)),
    Sphere(
        "checker_sphere",
        (0.0, 0.0, GROUND_HEIGHT + 0.55),
        0.55,
        _rotation_z(0.35) @ _rotation_x(0.5),
        "checker",
        (0.85, 0.15, 0.1),
        (0.95, 0.92, 0.82),
    ),
    Box(
        "striped_box",
        (0.62, -0.5, GROUND_HEIGHT + 0.25),
        (0.25, 0.25, 0.25),
        0.45,
        0.1,
        (0.15, 0.3, 0.8),
        (0.95, 0.8, 0.2),
    ),
    Cylinder("helix_cylinder", (-0.62, -0.45), GROUND_HEIGHT, 0.25, 0.22, (0.15, 0.6, 0.3), (0.95, 0.95, 0.95)),
    Sphere(
        "dotted_sphere",
        (-0.25, 0.72, GROUND_HEIGHT + 0.27),
        0.27,
        np.eye(3),
        "dots",
        (0.25, 0.1, 0.05),
        (0.95, 0.55, 0.15),
    ),
)
"""The scene: everything lies inside [-1.2, 1.2] x [-1.2, 1.2] x [-0.6, 0.5], within nerfstudio's Blender box."""
LOOK_AT_TARGET = (0.0, 0.0, -0.1)
"""Where every camera looks: a little below the origin, so the near rim of the ground disc stays in frame."""


def _closest_hit(origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance along each ray and index into ``PRIMITIVES`` of its first hit; (inf, -1) where it misses."""
    ts = np.stack([primitive.intersect(origins, dirs) for primitive in PRIMITIVES])
    index = ts.argmin(axis=0)
    t = ts[index, np.arange(len(index))]
    return t, np.where(np.isfinite(t), index, -1)


def shade(points: np.ndarray, normals: np.ndarray, albedo: np.ndarray) -> np.ndarray:
    """Lambert shading of surface points [N,3]: ambient plus the directional light unless a shadow ray is blocked."""
    cosine = np.clip(normals @ LIGHT_DIR, 0.0, None)
    lit = cosine > 0
    shadow_origins = points[lit] + _SHADOW_OFFSET * normals[lit]
    blocked = np.isfinite(_closest_hit(shadow_origins, np.broadcast_to(LIGHT_DIR, shadow_origins.shape))[0])
    cosine[np.flatnonzero(lit)[blocked]] = 0.0
    return albedo * (AMBIENT + DIFFUSE * cosine)[:, None]


def cast_rays(origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trace [N,3] rays (directions need not be unit): distance along the unit direction, primitive index
    (-1 on a miss) and shaded colour [N,3] (0 on a miss)."""
    origins = np.broadcast_to(np.asarray(origins, dtype=np.float64), np.shape(dirs))
    dirs = np.asarray(dirs, dtype=np.float64)
    dirs = dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)
    t, index = _closest_hit(origins, dirs)
    rgb = np.zeros_like(dirs)
    for i, primitive in enumerate(PRIMITIVES):
        mask = index == i
        if mask.any():
            points = origins[mask] + t[mask, None] * dirs[mask]
            rgb[mask] = shade(points, primitive.normal(points), primitive.albedo(points))
    return t, index, rgb


def render_view(
    c2w: np.ndarray,
    width: int,
    height: int,
    focal: float,
    supersample: int = 1,
    jitter_rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one pinhole view: [H,W,4] float RGBA in [0,1] with straight (not premultiplied) alpha, and the exact
    z-depth [H,W] (distance along the camera axis, as nerfstudio's depth maps hold it).

    ``c2w`` is a 3x4 or 4x4 camera-to-world matrix in Blender/OpenGL axes; the principal point is the image centre
    and pixel (i, j) spans [j, j+1] x [i, i+1], as in nerfstudio. Each pixel averages ``supersample**2`` rays, one per
    stratum, at stratum centres or jittered within them with ``jitter_rng``. Alpha is the fraction of rays that hit
    and colour the mean over those, so compositing over white gives the mean over all rays with white for misses;
    depth is the mean over the rays that hit, 0 where none does.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    strata = (np.arange(supersample) + 0.5) / supersample
    sub_y, sub_x = np.meshgrid(strata, strata, indexing="ij")
    sub = np.stack([sub_y.ravel(), sub_x.ravel()], axis=1)  # [S,2] offsets within a pixel, (y, x)
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    offsets = np.broadcast_to(sub, (height, width, len(sub), 2))
    if jitter_rng is not None:
        offsets = offsets + jitter_rng.uniform(-0.5, 0.5, offsets.shape) / supersample
    y = rows[..., None] + offsets[..., 0]
    x = cols[..., None] + offsets[..., 1]
    cam_dirs = np.stack([(x - 0.5 * width) / focal, -(y - 0.5 * height) / focal, -np.ones_like(x)], axis=-1)
    world_dirs = cam_dirs.reshape(-1, 3) @ c2w[:3, :3].T
    t, index, rgb = cast_rays(c2w[:3, 3], world_dirs)
    hit = (index >= 0).reshape(height, width, len(sub))
    coverage = hit.sum(axis=-1)
    color = rgb.reshape(height, width, len(sub), 3).sum(axis=2) / np.maximum(coverage, 1)[..., None]
    # t runs along the unit direction; the camera-axis component of a unit direction is 1 / |cam_dir|.
    z = np.where(hit, t.reshape(hit.shape) / np.linalg.norm(cam_dirs, axis=-1), 0.0)
    depth = z.sum(axis=-1) / np.maximum(coverage, 1)
    return np.concatenate([color, (coverage / len(sub))[..., None]], axis=-1), depth


def look_at(eye: np.ndarray, target: tuple[float, float, float]) -> np.ndarray:
    """4x4 camera-to-world in Blender axes (camera -Z towards ``target``, +Y towards world +Z); not for eyes
    straight above or below the target."""
    back = eye - np.asarray(target)
    z_axis = back / np.linalg.norm(back)
    x_axis = np.cross([0.0, 0.0, 1.0], z_axis)
    x_axis /= np.linalg.norm(x_axis)
    c2w = np.eye(4)
    c2w[:3, :4] = np.stack([x_axis, np.cross(z_axis, x_axis), z_axis, eye], axis=1)
    return c2w


def camera_poses(config: EmbeddedSceneConfig) -> dict[str, np.ndarray]:
    """Camera-to-world matrices [N,4,4] per split, at ``camera_distance`` from the origin, looking at the scene.

    Training cameras follow a golden-angle spiral over the elevation band, uniform in area, with seeded jitter and
    rotation, so they cover the band evenly instead of lying on a few rings. Validation cameras lie on one ring and
    test cameras alternate between a low and a high one, each ring evenly spaced with a seeded azimuth offset, so
    evaluation sees every side of the scene from viewpoints that are not copies of training ones.
    """
    rng = np.random.default_rng(config.seed)
    low, high = np.sin(np.radians([config.min_elevation_deg, config.max_elevation_deg]))

    def ring(elevation_fraction: np.ndarray, azimuth: np.ndarray) -> np.ndarray:
        sin_elevation = low + elevation_fraction * (high - low)
        cos_elevation = np.sqrt(1.0 - sin_elevation**2)
        eyes = config.camera_distance * np.stack(
            [cos_elevation * np.cos(azimuth), cos_elevation * np.sin(azimuth), sin_elevation], axis=1
        )
        return np.stack([look_at(eye, LOOK_AT_TARGET) for eye in eyes])

    golden_angle = math.pi * (3.0 - math.sqrt(5.0))
    n = np.arange(config.n_train)
    train = ring(
        (n + rng.uniform(0.2, 0.8, config.n_train)) / config.n_train, rng.uniform(0, 2 * math.pi) + golden_angle * n
    )
    val_azimuth = (np.arange(config.n_val) + 0.5) * 2 * math.pi / config.n_val + rng.uniform(0, 2 * math.pi)
    val = ring(np.full(config.n_val, 0.4), val_azimuth)
    k = np.arange(config.n_test)
    test_azimuth = (k + 0.25) * 2 * math.pi / config.n_test + rng.uniform(0, 2 * math.pi)
    test = ring(np.where(k % 2 == 0, 0.25, 0.7), test_azimuth)
    return {"train": train, "val": val, "test": test}


def _expected_meta(config: EmbeddedSceneConfig) -> dict[str, Any]:
    # The digest catches edits to the geometry, textures, lighting or camera target that forgot FORMAT_VERSION.
    scene = repr((PRIMITIVES, LIGHT_DIR.tolist(), AMBIENT, DIFFUSE, LOOK_AT_TARGET)).encode()
    return {
        "format_version": FORMAT_VERSION,
        "scene_digest": hashlib.sha256(scene).hexdigest(),
        "config": asdict(config),
    }


def scene_is_complete(output_dir: Path, config: EmbeddedSceneConfig) -> bool:
    """Whether ``output_dir`` holds every file of the scene for ``config`` (checks presence, not pixel contents)."""
    try:
        if json.loads((output_dir / META_FILENAME).read_text()) != _expected_meta(config):
            return False
        counts = {"train": config.n_train, "val": config.n_val, "test": config.n_test}
        for split in SPLITS:
            frames = json.loads((output_dir / f"transforms_{split}.json").read_text())["frames"]
            if len(frames) != counts[split]:
                return False
            if not all((output_dir / f"{frame['file_path']}.png").is_file() for frame in frames):
                return False
        if config.depth_maps:
            frames = json.loads((output_dir / NERFSTUDIO_TRANSFORMS).read_text())["frames"]
            if not all((output_dir / frame["depth_file_path"]).is_file() for frame in frames):
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def _render_into(directory: Path, config: EmbeddedSceneConfig, show_progress: bool) -> None:
    from rich.progress import track

    poses = camera_poses(config)
    focal = 0.5 * config.image_size / math.tan(0.5 * config.camera_angle_x)
    views = [(split_index, split, i) for split_index, split in enumerate(SPLITS) for i in range(len(poses[split]))]
    frames: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    points: list[np.ndarray] = []
    for split_index, split, i in track(views, description="Rendering embedded scene", disable=not show_progress):
        c2w = poses[split][i]
        rng = np.random.default_rng([config.seed, split_index, i])
        rgba, depth = render_view(c2w, config.image_size, config.image_size, focal, config.supersample, rng)
        (directory / split).mkdir(exist_ok=True)
        pixels = np.round(np.clip(rgba, 0.0, 1.0) * 255.0).astype(np.uint8)
        Image.fromarray(pixels).save(directory / split / f"r_{i}.png")
        frames[split].append({"file_path": f"./{split}/r_{i}", "transform_matrix": c2w.tolist()})
        if config.depth_maps:
            _write_depth(directory / "depth" / split / f"r_{i}.png", depth)
            if split == "train":
                points.append(_surface_points(c2w, depth, pixels, focal, rng))
    for split in SPLITS:
        transforms = {"camera_angle_x": config.camera_angle_x, "frames": frames[split]}
        (directory / f"transforms_{split}.json").write_text(json.dumps(transforms, indent=2))
    if config.depth_maps:
        _write_points(directory / SPARSE_POINTS, np.concatenate(points))
        _write_nerfstudio_transforms(directory, frames, focal, config.image_size)
    # Written last: its presence (with matching content) is what marks the scene as complete.
    (directory / META_FILENAME).write_text(json.dumps(_expected_meta(config), indent=2))


def _write_depth(path: Path, depth: np.ndarray) -> None:
    """A z-depth map as a 16-bit PNG in millimetres, 0 where no surface is hit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(depth * MILLIMETRES).astype(np.uint16)).save(path)


def _surface_points(
    c2w: np.ndarray, depth: np.ndarray, pixels: np.ndarray, focal: float, rng: np.random.Generator
) -> np.ndarray:
    """``SPARSE_POINTS_PER_VIEW`` of the view's fully covered pixels lifted to the world at their depth, with their
    colour: [K, 6] (x, y, z, r, g, b)."""
    height, width = depth.shape
    rows, cols = np.nonzero((depth > 0) & (pixels[..., 3] == 255))
    pick = rng.choice(len(rows), size=min(SPARSE_POINTS_PER_VIEW, len(rows)), replace=False)
    rows, cols = rows[pick], cols[pick]
    z = depth[rows, cols]
    cam = np.stack([(cols + 0.5 - 0.5 * width) / focal * z, -(rows + 0.5 - 0.5 * height) / focal * z, -z], axis=1)
    world = cam @ c2w[:3, :3].T + c2w[:3, 3]
    return np.concatenate([world, pixels[rows, cols, :3].astype(np.float64)], axis=1)


def _write_points(path: Path, points: np.ndarray) -> None:
    """An ASCII PLY of coloured points (what nerfstudio-data reads as ``ply_file_path``)."""
    header = [
        "ply", "format ascii 1.0", f"element vertex {len(points)}",
        "property float x", "property float y", "property float z",
        "property uchar red", "property uchar green", "property uchar blue", "end_header",
    ]  # fmt: skip
    rows = [f"{x:.6f} {y:.6f} {z:.6f} {int(r)} {int(g)} {int(b)}" for x, y, z, r, g, b in points]
    path.write_text("\n".join(header + rows) + "\n")


def _write_nerfstudio_transforms(
    directory: Path, frames: dict[str, list[dict[str, Any]]], focal: float, size: int
) -> None:
    """nerfstudio-data's transforms.json: every split's frames with their depth files, the split lists, the points."""
    entries = [
        {
            "file_path": f"{frame['file_path']}.png",
            "transform_matrix": frame["transform_matrix"],
            "depth_file_path": f"depth/{frame['file_path'][2:]}.png",
        }
        for split in SPLITS
        for frame in frames[split]
    ]
    transforms = {
        "camera_model": "OPENCV",
        "fl_x": focal, "fl_y": focal, "cx": size / 2, "cy": size / 2, "w": size, "h": size,
        "ply_file_path": SPARSE_POINTS,
        "frames": entries,
        **{f"{split}_filenames": [f"{frame['file_path']}.png" for frame in frames[split]] for split in SPLITS},
    }  # fmt: skip
    (directory / NERFSTUDIO_TRANSFORMS).write_text(json.dumps(transforms, indent=2))


def make_depth_relative(scene_dir: Path, split: str = "train", seed: int = 0) -> dict[str, tuple[float, float]]:
    """Rewrite one split's depth maps of a scene written with ``depth_maps`` as a monocular estimator gives them:
    ``a / z + b``, with ``a`` and ``b`` drawn per image, as .npy files that transforms.json then names (0 stays 0,
    no depth). Returns ``(a, b)`` by file; a split already rewritten is left as it is."""
    rng = np.random.default_rng(seed)
    path = scene_dir / NERFSTUDIO_TRANSFORMS
    transforms = json.loads(path.read_text())
    chosen = set(transforms[f"{split}_filenames"])
    applied: dict[str, tuple[float, float]] = {}
    for frame in transforms["frames"]:
        if frame["file_path"] not in chosen or not frame["depth_file_path"].endswith(".png"):
            continue
        depth = np.asarray(Image.open(scene_dir / frame["depth_file_path"]), dtype=np.float64) / MILLIMETRES
        a, b = rng.uniform(0.5, 3.0), rng.uniform(-0.2, 0.5)
        relative = np.where(depth > 0, a / np.where(depth > 0, depth, 1.0) + b, 0.0)
        frame["depth_file_path"] = frame["depth_file_path"][: -len(".png")] + ".npy"
        np.save(scene_dir / frame["depth_file_path"], relative.astype(np.float32))
        applied[frame["depth_file_path"]] = (a, b)
    path.write_text(json.dumps(transforms, indent=2))
    return applied


def write_embedded_scene(
    output_dir: Path, config: EmbeddedSceneConfig = EmbeddedSceneConfig(), show_progress: bool = False
) -> Path:
    """Write the scene to ``output_dir`` unless it already holds it for ``config``; returns ``output_dir``.

    Rendering goes to a temporary sibling folder that is renamed into place only when complete, so a crash never
    leaves a half-written scene behind that looks complete. An existing folder is replaced only when it is empty or
    holds an (outdated or incomplete) embedded scene, never when it looks like someone else's data.
    """
    output_dir = Path(output_dir)
    if scene_is_complete(output_dir, config):
        return output_dir
    if output_dir.exists() and not (
        output_dir.is_dir() and (not any(output_dir.iterdir()) or (output_dir / META_FILENAME).exists())
    ):
        raise FileExistsError(f"{output_dir} exists and does not hold an embedded scene; not overwriting it")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        os.chmod(staging, 0o755)
        _render_into(staging, config, show_progress)
        if output_dir.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
            output_dir.rename(trash / output_dir.name)
            staging.rename(output_dir)
            shutil.rmtree(trash)
        else:
            staging.rename(output_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return output_dir


def main(
    output_dir: Path,
    config: Annotated[EmbeddedSceneConfig, tyro.conf.OmitArgPrefixes] = EmbeddedSceneConfig(),
) -> None:
    """Write the embedded default scene to OUTPUT_DIR in nerfstudio's Blender format (skipped if up to date)."""
    up_to_date = scene_is_complete(output_dir, config)
    write_embedded_scene(output_dir, config, show_progress=True)
    print(f"Embedded scene {'already up to date' if up_to_date else 'written'} at {output_dir.resolve()}")


if __name__ == "__main__":
    tyro.cli(main)
