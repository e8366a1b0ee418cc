"""Small builders shared by the tests: the shared/ folder, cameras and models on the CPU."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
NODE_MODULES = Path(os.environ["D3DGS_NODE_MODULES"]) if os.environ.get("D3DGS_NODE_MODULES") else None
"""A node_modules folder with the independent readers (PlayCanvas splat-transform 3.x, gltf-validator,
@gltf-transform/core) that .ci/run installs, run by the ``node`` on PATH (Node.js >= 22); tests that need one skip
without it."""


def node_package(name: str) -> Path | None:
    """The installed npm package ``name`` under NODE_MODULES, or None."""
    path = NODE_MODULES / name if NODE_MODULES is not None else None
    return path if path is not None and (path / "package.json").exists() else None


def _splat_transform() -> str | None:
    if os.environ.get("SPLAT_TRANSFORM"):
        return os.environ["SPLAT_TRANSFORM"]
    if node_package("@playcanvas/splat-transform") is not None:
        return str(NODE_MODULES / ".bin" / "splat-transform")
    return shutil.which("splat-transform")


SPLAT_TRANSFORM = _splat_transform()
"""PlayCanvas' splat-transform command, or None."""


def shared_dir() -> Path:
    """``../shared`` beside the checkout, or $DISTILLED3DGS_SHARED."""
    return Path(os.environ.get("DISTILLED3DGS_SHARED", REPO_ROOT.parent / "shared"))


def require_shared(relative: str) -> Path:
    """Path inside shared/, skipping the test cleanly when it is absent."""
    path = shared_dir() / relative
    if not path.exists():
        pytest.skip(f"{path} not available (shared data absent)")
    return path


def look_at_camera(position: tuple[float, float, float], size: int = 32, fov_deg: float = 50.0):
    """A nerfstudio pinhole camera (OpenGL axes) at ``position`` looking at the origin, +Z up."""
    from nerfstudio.cameras.cameras import Cameras

    eye = torch.tensor(position, dtype=torch.float32)
    forward = -eye / eye.norm()
    right = torch.linalg.cross(forward, torch.tensor([0.0, 0.0, 1.0]))
    right = right / right.norm()
    up = torch.linalg.cross(right, forward)
    c2w = torch.stack([right, up, -forward, eye], dim=1)  # camera looks down its -Z
    focal = 0.5 * size / math.tan(math.radians(fov_deg) / 2)
    return Cameras(
        camera_to_worlds=c2w[None],
        fx=focal,
        fy=focal,
        cx=size / 2,
        cy=size / 2,
        width=size,
        height=size,
    )


def make_model(config, num_points: int = 300, num_train_data: int = 4, seed: int = 0):
    """Build a splatfacto-family model on the CPU from random points in [-0.5, 0.5]^3."""
    from nerfstudio.data.scene_box import SceneBox

    torch.manual_seed(seed)
    config.random_init = True
    config.num_random = num_points
    config.random_scale = 1.0
    scene_box = SceneBox(aabb=torch.tensor([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]]))
    model = config.setup(scene_box=scene_box, num_train_data=num_train_data, metadata={}, device="cpu")
    with torch.no_grad():  # opaque enough to see, small enough to stay local
        model.gauss_params["opacities"].fill_(2.0)
        model.gauss_params["scales"].fill_(math.log(0.05))
    return model


def e2e_scene(scratch: Path) -> Path:
    """lego-100 from shared/ when present, else the embedded scene written (small) into ``scratch``."""
    lego = shared_dir() / "data" / "lego-100"
    if lego.exists():
        return lego
    from distilled3dgs_ns.scenes import EmbeddedSceneConfig, write_embedded_scene

    return write_embedded_scene(scratch / "embedded", EmbeddedSceneConfig(image_size=64))


def run_cli(
    args: list[str], cwd: Path, timeout: int = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run an ns-* command as a user would (LPIPS off: offline), failing the test with its output; ``env`` adds
    variables."""
    env = {**os.environ, "COLUMNS": "200", "DISTILLED3DGS_NO_LPIPS": "1", **(env or {})}
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def textured_splat(sh_degree: int = 3, num_points: int = 300, seed: int = 0):
    """A tiny splat with non-trivial SH, a few invisible Gaussians, rendered at full SH degree."""
    from distilled3dgs_ns.portable_splatfacto import PortableSplatfactoModelConfig

    model = make_model(PortableSplatfactoModelConfig(num_downscales=0, sh_degree=sh_degree), num_points, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        params = model.gauss_params
        params["features_rest"].copy_(0.3 * torch.randn(params["features_rest"].shape, generator=generator))
        params["scales"].add_(0.3 * torch.randn(params["scales"].shape, generator=generator))
        params["opacities"].copy_((3 * torch.randn(params["opacities"].shape, generator=generator)).clamp(-5.0, 8.0))
        params["opacities"][:5] = -8.0  # below 1/255: dropped, as ns-export does
        params["quats"].mul_(1.7)  # splatfacto does not keep them normalised
    model.step = 100_000
    model.eval()
    return model


def splat_transform_ply(source, tmp_path) -> dict[str, np.ndarray]:
    """``source`` after splat-transform converted it to a PLY: ``means``, ``scales``, ``quats`` (as stored, wxyz),
    ``opacity`` (logit), and ``rest`` ``[N, K-1, 3]`` where the PLY has SH rest coefficients."""
    from plyfile import PlyData

    subprocess.run([SPLAT_TRANSFORM, "-w", "-q", str(source), str(tmp_path / "back.ply")], check=True)
    vertex = PlyData.read(str(tmp_path / "back.ply"))["vertex"]
    names = [prop.name for prop in vertex.properties]

    def stack(*columns: str) -> np.ndarray:
        return np.stack([np.asarray(vertex[name]) for name in columns], axis=1)

    fields = {
        "means": stack("x", "y", "z"),
        "scales": stack("scale_0", "scale_1", "scale_2"),
        "quats": stack("rot_0", "rot_1", "rot_2", "rot_3"),
        "opacity": np.asarray(vertex["opacity"]).copy(),
    }
    rest = [name for name in names if name.startswith("f_rest_")]
    if rest:
        fields["rest"] = stack(*rest).reshape(len(vertex), 3, -1).transpose(0, 2, 1)
    return fields
