"""The one prepared GPU check: gsplat against our torch rasteriser, a teacher with each, the demo's student on CUDA.

    python benchmarks/gpu_check.py                 # everything (about 10 minutes on one GPU)
    python benchmarks/gpu_check.py --no-training   # the rasteriser tables only

On a machine without CUDA it still runs (the CUDA rows say "no GPU"), so it is tested on the CPU. Tables, markdown:
1. agreement on the shared reference scene (20k Gaussians, 256x256): render PSNR and gradient cosine per parameter of
   each backend against gsplat on CUDA (on a CPU-only machine: against the shared OpenSplat reference);
2. forward and forward+backward time of each backend at 20k and 1M Gaussians (1M only on CUDA);
3. a standard teacher on lego-100 per backend (time, Gaussian count, test PSNR), and the demo's student on CUDA.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro
from raster_cpu import DEFAULT_SCENE, load_scene, resized, time_it
from teacher_cpu import Args as TeacherArgs
from teacher_cpu import run as train_teacher

from distilled3dgs_ns.rasterization import gsplat_problem, rasterization

PARAMS = ("means", "quats", "scales", "opacities", "colors")
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lego-100"


@dataclass
class Args:
    scene: Path = DEFAULT_SCENE
    """The shared reference scene (npz) with its OpenSplat render and gradients beside it."""
    data: Path = DEFAULT_DATA
    """The scene of the teacher rows (lego-100)."""
    teacher_steps: int = 3000
    """Steps of each teacher row."""
    big: int = 1_000_000
    """Gaussians of the large timing row (CUDA only)."""
    repeats: int = 5
    """Timed repetitions per timing (median), after two untimed ones."""
    training: bool = True
    """Also train the teachers and the demo (CUDA only; on a CPU the rows say "no GPU")."""
    output_dir: Path | None = None
    """Where the trainings go (default: a temporary folder)."""


def backends() -> list[tuple[str, torch.device, str]]:
    """(label, device, backend) of every rasteriser this machine can run."""
    rows = [("torch, CPU", torch.device("cpu"), "torch")]
    if torch.cuda.is_available():
        rows.append(("torch, CUDA", torch.device("cuda"), "torch"))
        if gsplat_problem() is None:
            rows.append(("gsplat, CUDA", torch.device("cuda"), "gsplat"))
    return rows


def render_and_grads(scene: dict, device: torch.device, backend: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    params = {k: scene[k].to(device).clone().requires_grad_(True) for k in PARAMS}
    render, _, _ = rasterization(
        params["means"], params["quats"], params["scales"], params["opacities"], params["colors"],
        scene["viewmat"][None].to(device), scene["K"][None].to(device), scene["width"], scene["height"],
        packed=False, backend=backend,
    )  # fmt: skip
    (render[0] * scene["dL_dimg"].to(device)).sum().backward()
    return render[0].detach().cpu(), {k: v.grad.detach().cpu() for k, v in params.items()}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return -10 * math.log10(max(float(((a - b) ** 2).mean()), 1e-20))


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.reshape(1, -1).double(), b.reshape(1, -1).double()))


def agreement_table(scene: dict, args: Args) -> list[str]:
    rows = backends()
    outputs = {label: render_and_grads(scene, device, backend) for label, device, backend in rows}
    if "gsplat, CUDA" in outputs:
        against, reference = "gsplat on CUDA", outputs["gsplat, CUDA"]
    else:
        stem = args.scene.name.replace("scene_", "opensplat_").removesuffix(".npz")
        grads = np.load(args.scene.parent / f"{stem}_grads.npz")
        against = "the shared OpenSplat reference (no GPU)"
        reference = (
            torch.from_numpy(np.load(args.scene.parent / f"{stem}_render.npy")),
            {k: torch.from_numpy(np.asarray(grads[k])) for k in PARAMS},
        )
    lines = [f"Agreement with {against}, reference scene ({scene['means'].shape[0]} Gaussians):", ""]
    lines += ["| backend | render PSNR (dB) | " + " | ".join(f"cos {k}" for k in PARAMS) + " |"]
    lines += ["|---|---|" + "---|" * len(PARAMS)]
    for label, (render, grads) in outputs.items():
        cells = " | ".join(f"{cosine(grads[k], reference[1][k].reshape(grads[k].shape)):.5f}" for k in PARAMS)
        lines.append(f"| {label} | {psnr(render, reference[0].reshape(render.shape)):.1f} | {cells} |")
    if not torch.cuda.is_available():
        lines.append("| gsplat, CUDA | no GPU |" + " |" * len(PARAMS))
    elif "gsplat, CUDA" not in outputs:
        lines.append(f"| gsplat, CUDA | unavailable: {gsplat_problem()} |" + " |" * len(PARAMS))
    return lines


def timed(scene: dict, device: torch.device, backend: str, backward: bool, repeats: int) -> float:
    params = {k: scene[k].to(device).clone().requires_grad_(backward) for k in PARAMS}
    viewmat, K, weights = scene["viewmat"][None].to(device), scene["K"][None].to(device), scene["dL_dimg"].to(device)

    def step() -> None:
        with torch.set_grad_enabled(backward):
            render, _, _ = rasterization(
                *(params[k] for k in PARAMS), viewmat, K, scene["width"], scene["height"], packed=False,
                backend=backend,
            )  # fmt: skip
            if backward:
                (render[0] * weights).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return statistics.median(time_it(step, repeats, 2))


def timing_table(scene: dict, args: Args) -> list[str]:
    lines = ["| backend | Gaussians | forward (ms) | forward+backward (ms) |", "|---|---|---|---|"]
    for label, device, backend in backends():
        for num in (scene["means"].shape[0], args.big):
            if device.type != "cuda" and num > scene["means"].shape[0]:
                lines.append(f"| {label} | {num} | skipped on the CPU | |")
                continue
            case = resized(scene, num=num)
            fwd = timed(case, device, backend, False, args.repeats)
            both = timed(case, device, backend, True, args.repeats)
            lines.append(f"| {label} | {num} | {1000 * fwd:.1f} | {1000 * both:.1f} |")
    if not torch.cuda.is_available():
        lines.append("| CUDA (torch and gsplat) | | no GPU | no GPU |")
    return lines


def training_table(args: Args, out: Path) -> list[str]:
    lines = ["| training | wall time (s) | #Gaussians | test PSNR |", "|---|---|---|---|"]
    if not args.training:
        return lines + ["| (skipped: --no-training) | | | |"]
    if not torch.cuda.is_available():
        teacher = f"| teacher, lego-100, {args.teacher_steps} steps | no GPU | | |"
        return lines + [teacher, "| demo student | no GPU | | |"]
    for rasterizer in ("gsplat", "torch"):
        row = train_teacher(
            TeacherArgs(data=args.data, steps=args.teacher_steps, output_dir=out / rasterizer, device="cuda",
                        extra=f"--pipeline.model.rasterizer {rasterizer}")
        )  # fmt: skip
        label = f"teacher, lego-100, {args.teacher_steps} steps, {rasterizer}"
        lines.append(f"| {label} | {row['train_s']:.0f} | {row['num_gaussians']} | {row['psnr']:.2f} |")
    start = time.perf_counter()
    demo = out / "demo"
    subprocess.run(
        [sys.executable, "-m", "distilled3dgs_ns.run", "--preset", "demo", "--device-type", "cuda",
         "--output-dir", str(demo)], check=True,
    )  # fmt: skip
    student = json.loads((demo / "report.json").read_text())["models"]["student"]
    lines.append(
        f"| demo (teachers + student), student row | {time.perf_counter() - start:.0f} | "
        f"{student['num_gaussians']} | {student['psnr']:.2f} |"
    )
    return lines


def main() -> None:
    args = tyro.cli(Args)
    scene = load_scene(args.scene)
    cuda = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}); device: {cuda}; gsplat: {gsplat_problem() or 'ok'}")
    print()
    print("\n".join(agreement_table(scene, args)))
    print()
    print("\n".join(timing_table(scene, args)))
    print()
    with tempfile.TemporaryDirectory() as tmp:
        print("\n".join(training_table(args, args.output_dir or Path(tmp))))


if __name__ == "__main__":
    main()
