"""Small builders shared by the tests: the shared/ folder, cameras and models on the CPU."""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


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
