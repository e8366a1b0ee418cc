"""Our CPU rasteriser beside OpenSplat's C++ CPU rasteriser, forward and forward+backward, in one process.

    git clone https://github.com/pierotofy/OpenSplat /tmp/OpenSplat     # any checkout; nothing of it is copied here
    python benchmarks/raster_peer.py --opensplat /tmp/OpenSplat

OpenSplat's CPU sources (``rasterizer/gsplat-cpu/gsplat_cpu.cpp``, ``project_gaussians.cpp``,
``rasterize_gaussians.cpp``) are compiled with ``torch.utils.cpp_extension`` beside ``opensplat_glue.cpp`` (a minute
the first time, cached after). The two run alternately on the shared reference scene, so load on the machine hits
both alike; the table gives the medians and our time as a fraction of the peer's. Its rasteriser is single-threaded
C++; its projection and ours use torch's threads (``--threads``).

The render of the peer as it ships differs from the reference (its rasteriser reads the depths it sorts by as a
contiguous array, but its projection returns a strided view); the depths are made contiguous here, which is what the
reference renders in ``shared/reference/cpu-raster`` used, and the agreement is printed. Its backward also halves the
off-diagonal conic gradient (quats and scales gradients differ); that does not change its speed.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro
from raster_cpu import DEFAULT_SCENE, load_scene, make_step

from distilled3dgs_ns.rasterization import rasterization

HERE = Path(__file__).resolve().parent
PARAMS = ("means", "quats", "scales", "opacities", "colors")


@dataclass
class Args:
    opensplat: Path
    """An OpenSplat checkout (its CPU sources are compiled from there)."""
    scene: Path = DEFAULT_SCENE
    """The reference scene (npz), as for raster_cpu.py."""
    threads: tuple[int, ...] = (1, 2)
    """torch intra-op thread counts to compare at (each a row)."""
    repeats: int = 7
    """Timed repetitions of each rasteriser, alternating."""
    build_dir: Path = Path("outputs/benchmarks/opensplat-build")
    """Where the compiled peer is cached."""


def build_peer(source: Path, build_dir: Path):
    """OpenSplat's CPU path and our glue as a Python module (CPU branches only: no CUDA, HIP or Metal defines)."""
    from torch.utils.cpp_extension import load

    needed = [source / "rasterizer" / "gsplat-cpu" / "gsplat_cpu.cpp", source / "project_gaussians.cpp"]
    needed.append(source / "rasterize_gaussians.cpp")
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise SystemExit(f"--opensplat {source}: not an OpenSplat checkout (missing {', '.join(missing)})")
    build_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MAX_JOBS", "2")
    return load(
        name="opensplat_cpu_peer",
        sources=[str(HERE / "opensplat_glue.cpp"), *map(str, needed)],
        extra_include_paths=[str(source), str(source / "rasterizer")],
        extra_cflags=["-O3", "-march=native"],
        build_directory=str(build_dir),
    )


def gl_projection(width: int, height: int, fx: float, fy: float, near: float = 0.001, far: float = 1000.0):
    """The symmetric perspective matrix OpenSplat's model.cpp builds (it assumes a centred principal point)."""
    tan_x, tan_y = width / (2 * fx), height / (2 * fy)
    return torch.tensor(
        [
            [1 / tan_x, 0.0, 0.0, 0.0],
            [0.0, 1 / tan_y, 0.0, 0.0],
            [0.0, 0.0, (far + near) / (far - near), -far * near / (far - near)],
            [0.0, 0.0, 1.0, 0.0],
        ]
    )


def peer_step(peer, scene: dict, backward: bool):
    """One render (and backward of sum(render * dL_dimg)) by the peer, as model.cpp calls it."""
    params = {k: scene[k].clone().requires_grad_(backward) for k in PARAMS}
    width, height = scene["width"], scene["height"]
    fx, fy, cx, cy = (float(scene["K"][i, j]) for i, j in ((0, 0), (1, 1), (0, 2), (1, 2)))
    if abs(cx - width / 2) > 1e-3 or abs(cy - height / 2) > 1e-3:
        raise SystemExit("the peer assumes a centred principal point; the scene's is not")
    projmat = gl_projection(width, height, fx, fy) @ scene["viewmat"]
    background = torch.zeros(3)

    def step() -> torch.Tensor:
        with torch.set_grad_enabled(backward):
            quats = params["quats"] / params["quats"].norm(dim=-1, keepdim=True)
            xys, radii, conics, cov2d, depths = peer.project(
                params["means"], params["scales"], quats, scene["viewmat"], projmat, fx, fy, cx, cy, height, width
            )
            opacities = params["opacities"].reshape(-1, 1)
            image = peer.rasterize(
                xys, radii, conics, params["colors"], opacities, cov2d, depths.contiguous(), height, width, background
            )
            if backward:
                (image * scene["dL_dimg"]).sum().backward()
                for p in params.values():
                    p.grad = None
        return image.detach()

    return step


def alternate(steps: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each step, run in turn (one warm-up each) so that machine load hits all alike."""
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    args = tyro.cli(Args)
    scene = load_scene(args.scene)
    start = time.perf_counter()
    peer = build_peer(args.opensplat.resolve(), args.build_dir)
    built = time.perf_counter() - start
    print(f"peer built or loaded in {built:.0f} s; torch {torch.__version__}, {os.cpu_count()} cores")
    peer_image = peer_step(peer, scene, False)()
    with torch.no_grad():
        render, _, _ = rasterization(
            *(scene[k] for k in PARAMS), scene["viewmat"][None], scene["K"][None], scene["width"], scene["height"]
        )
    mse = float(((render[0] - peer_image) ** 2).mean())
    print(f"agreement of the two renders: {10 * math.log10(1 / mse):.1f} dB PSNR" if mse else "identical renders")
    print()
    print("| torch threads | pass | OpenSplat (s) | ours (s) | ours / OpenSplat |")
    print("|---|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, backward in (("forward", False), ("forward+backward", True)):
            medians = alternate(
                {"peer": peer_step(peer, scene, backward), "ours": make_step(scene, backward)}, args.repeats
            )
            ratio = medians["ours"] / medians["peer"]
            print(f"| {threads} | {name} | {medians['peer']:.3f} | {medians['ours']:.3f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
