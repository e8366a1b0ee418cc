"""Speed and memory of the pure-PyTorch rasteriser on the shared reference scene, plus a scaling table.

    python benchmarks/raster_cpu.py                      # reference scene + scaling table, 2 threads
    python benchmarks/raster_cpu.py --no-scaling         # reference figures only

Run it on an otherwise idle machine: with 2 threads, another busy process inflates the times many-fold.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

from distilled3dgs_ns.rasterization import rasterization

DEFAULT_SCENE = (
    Path(__file__).resolve().parents[2] / "shared" / "reference" / "cpu-raster" / "scene_n20000_256x256_seed0.npz"
)


@dataclass
class Args:
    scene: Path = DEFAULT_SCENE
    """The reference scene (npz with means, quats, scales, opacities, colors, viewmat, K, width, height)."""
    threads: int = 2
    """torch intra-op threads (the anchors in the issue use 2)."""
    repeats: int = 7
    """Timed repetitions after the warm-up."""
    warmup: int = 2
    """Untimed repetitions first."""
    scaling: bool = True
    """Also time 5k/20k/80k Gaussians at 256x256 and 128/256/512 pixels at 20k."""


def load_scene(path: Path) -> dict:
    if not path.exists():
        raise SystemExit(f"reference scene not found: {path} (pass --scene, or put shared/ beside the checkout)")
    data = np.load(path)
    scene = {k: torch.from_numpy(np.asarray(data[k])).float() for k in ("means", "quats", "scales", "opacities")}
    scene["colors"] = torch.from_numpy(data["colors"]).float()
    scene["viewmat"] = torch.from_numpy(data["viewmat"]).float()
    scene["K"] = torch.from_numpy(data["K"]).float()
    scene["width"], scene["height"] = int(data["width"]), int(data["height"])
    scene["dL_dimg"] = torch.from_numpy(data["dL_dimg"]).float()
    return scene


def resized(scene: dict, num: int | None = None, size: int | None = None, seed: int = 0) -> dict:
    """The scene with ``num`` Gaussians (subsampled, or tiled with jittered copies) and/or a ``size``-pixel image
    (same field of view: the intrinsics scale with the image)."""
    out = dict(scene)
    if num is not None:
        gen = torch.Generator().manual_seed(seed)
        base = scene["means"].shape[0]
        idx = torch.arange(num) % base
        out.update({k: scene[k][idx] for k in ("means", "quats", "scales", "opacities", "colors")})
        if num > base:  # copies move by about one Gaussian size so they do not coincide
            jitter = torch.randn(num, 3, generator=gen) * scene["scales"][idx].amax(dim=-1, keepdim=True)
            out["means"] = out["means"] + jitter * (torch.arange(num) >= base)[:, None]
    if size is not None:
        factor = size / scene["width"]
        out["K"] = scene["K"].clone()
        out["K"][:2] *= factor
        out["width"] = out["height"] = size
        gen = torch.Generator().manual_seed(seed + 1)
        out["dL_dimg"] = torch.rand(size, size, 3, generator=gen)
    return out


def make_step(scene: dict, backward: bool):
    params = {k: scene[k].clone().requires_grad_(backward) for k in ("means", "quats", "scales", "opacities", "colors")}

    def step() -> None:
        with torch.set_grad_enabled(backward):
            render, _, _ = rasterization(
                params["means"], params["quats"], params["scales"], params["opacities"], params["colors"],
                scene["viewmat"][None], scene["K"][None], scene["width"], scene["height"], packed=False,
            )  # fmt: skip
            if backward:
                (render[0] * scene["dL_dimg"]).sum().backward()
                for p in params.values():
                    p.grad = None

    return step


def time_it(step, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    args = tyro.cli(Args)
    torch.set_num_threads(args.threads)
    scene = load_scene(args.scene)
    rss_loaded = peak_rss_mb()
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} cores; scene {args.scene.name}")
    print("| pass | median (s) | min (s) | max (s) |")
    print("|---|---|---|---|")
    for name, backward in (("forward", False), ("forward+backward", True)):
        times = time_it(make_step(scene, backward), args.repeats, args.warmup)
        print(f"| {name} | {statistics.median(times):.3f} | {min(times):.3f} | {max(times):.3f} |")
    print(f"peak RSS: {peak_rss_mb():.0f} MB ({rss_loaded:.0f} MB of it before rendering: torch + scene)")
    if not args.scaling:
        return
    print()
    print("| Gaussians | image | forward median (s) | forward+backward median (s) |")
    print("|---|---|---|---|")
    cases = [(n, None) for n in (5_000, 20_000, 80_000)] + [(None, s) for s in (128, 512)]
    for num, size in cases:
        case = resized(scene, num=num, size=size)
        fwd = statistics.median(time_it(make_step(case, False), max(3, args.repeats // 2), 1))
        both = statistics.median(time_it(make_step(case, True), max(3, args.repeats // 2), 1))
        print(f"| {case['means'].shape[0]} | {case['width']}x{case['height']} | {fwd:.3f} | {both:.3f} |")


if __name__ == "__main__":
    main()
