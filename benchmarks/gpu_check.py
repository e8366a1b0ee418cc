"""The one prepared GPU check: gsplat against our torch rasteriser, a teacher with each, the demo's student on CUDA.

    python benchmarks/gpu_check.py                 # everything (about 10 minutes on one GPU)
    python benchmarks/gpu_check.py --no-training   # the rasteriser tables only

It starts with the CUDA path's tests (tests/test_cuda.py, skipped on machines without CUDA), as a row.

On a machine without CUDA it still runs (the CUDA rows say "no GPU"), so it is tested on the CPU. Each row is printed
(and written to <output-dir>/gpu_check.md) as soon as it is measured; a backend or training that fails, or a training
past --budget-s, is a row saying so, so one run on a borrowed GPU always returns its tables. On an offline GPU
machine with CUDA PyTorch but no nerfstudio, carry the wheels of gpu_check_wheels.txt (its header says how). Tables:
1. agreement on the shared reference scene (20k Gaussians, 256x256): render PSNR and gradient cosine per parameter of
   each backend against gsplat on CUDA (on a CPU-only machine: against the shared OpenSplat reference);
2. forward and forward+backward time of each backend at 20k and 1M Gaussians (1M only on CUDA);
3. a standard teacher on lego-100 per backend (time, Gaussian count, test PSNR), and the demo's student on CUDA.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
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
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "lego-100"


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
    budget_s: float = 540.0
    """Wall-clock budget of the whole check, from its start: a training is stopped when it runs past it and the next
    ones are skipped (their rows say so), so the tables come back within one lease of a GPU machine."""
    output_dir: Path | None = None
    """Where the trainings, their logs and gpu_check.md (the tables) go (default: a temporary folder)."""


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


def one_line(error: BaseException) -> str:
    """``error`` as a table cell: its type and the first line of its message (CUDA's says what went wrong there)."""
    lines = str(error).strip().splitlines() or [""]
    return f"failed: {type(error).__name__}: {lines[0][:160]}".replace("|", "/")


def agreement_table(scene: dict, args: Args) -> list[str]:
    outputs, failed = {}, []
    for label, device, backend in backends():
        try:
            outputs[label] = render_and_grads(scene, device, backend)
        except (RuntimeError, ValueError, TypeError, IndexError) as error:  # a first run on a new device
            failed.append(f"| {label} | {one_line(error)} |" + " |" * len(PARAMS))
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
    lines += failed
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
            try:
                fwd = timed(case, device, backend, False, args.repeats)
                both = timed(case, device, backend, True, args.repeats)
            except (RuntimeError, ValueError, TypeError, IndexError) as error:  # out of memory included
                lines.append(f"| {label} | {num} | {one_line(error)} | |")
                continue
            lines.append(f"| {label} | {num} | {1000 * fwd:.1f} | {1000 * both:.1f} |")
    if not torch.cuda.is_available():
        lines.append("| CUDA (torch and gsplat) | | no GPU | no GPU |")
    return lines


Trainer = Callable[[Path, float], tuple[float, int, float]]
"""``train(log, seconds left)`` -> (wall seconds, #Gaussians, test PSNR) of one training row."""


def last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()] if log.exists() else []
    return lines[-1][-200:].replace("|", "/") if lines else ""


def attempt(label: str, log: Path, deadline: float, train: Trainer) -> str:
    """One training row; a failure, a run past the budget or no time left is the row's text instead, so the rows after
    it still run."""
    left = deadline - time.perf_counter()
    if left < 30:
        return f"| {label} | skipped: the check's --budget-s is spent | | |"
    try:
        seconds, count, value = train(log, left)
    except subprocess.TimeoutExpired:
        return f"| {label} | stopped at the check's --budget-s (log: {log}) | | |"
    except (subprocess.CalledProcessError, OSError, KeyError, ValueError) as error:
        return f"| {label} | {one_line(error)}; log: {log}: {last_line(log)} | | |"
    return f"| {label} | {seconds:.0f} | {count} | {value:.2f} |"


def train_teacher_row(args: Args, out: Path, rasterizer: str) -> Trainer:
    def train(log: Path, left: float) -> tuple[float, int, float]:
        teacher = TeacherArgs(data=args.data, steps=args.teacher_steps, output_dir=out / rasterizer, device="cuda",
                              extra=f"--pipeline.model.rasterizer {rasterizer}")  # fmt: skip
        row = train_teacher(teacher, log=log, timeout_s=left)
        return row["train_s"], row["num_gaussians"], row["psnr"]

    return train


def run_group(command: list[str], log: Path, timeout_s: float) -> None:
    """``command`` and every process it starts, stopped together at ``timeout_s`` (a run starts its trainings)."""
    with open(log, "a") as output:
        process = subprocess.Popen(command, stdout=output, stderr=output, start_new_session=True)
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
    if code != 0:
        raise subprocess.CalledProcessError(code, command)


def train_demo(out: Path) -> Trainer:
    def train(log: Path, left: float) -> tuple[float, int, float]:
        start = time.perf_counter()
        command = [sys.executable, "-m", "distilled3dgs_ns.run", "--preset", "demo", "--device-type", "cuda",
                   "--output-dir", str(out / "demo")]  # fmt: skip
        run_group(command, log, left)
        student = json.loads((out / "demo" / "report.json").read_text())["models"]["student"]
        return time.perf_counter() - start, student["num_gaussians"], student["psnr"]

    return train


def training_table(args: Args, out: Path, deadline: float) -> Iterator[str]:
    """The training rows, each as soon as it is measured."""
    yield from ["| training | wall time (s) | #Gaussians | test PSNR |", "|---|---|---|---|"]
    if not args.training:
        yield "| (skipped: --no-training) | | | |"
        return
    if not torch.cuda.is_available():
        yield from [f"| teacher, lego-100, {args.teacher_steps} steps | no GPU | | |", "| demo student | no GPU | | |"]
        return
    (out / "logs").mkdir(parents=True, exist_ok=True)
    for rasterizer in ("gsplat", "torch"):
        label = f"teacher, lego-100, {args.teacher_steps} steps, {rasterizer}"
        if rasterizer == "gsplat" and gsplat_problem() is not None:
            yield f"| {label} | unavailable: {gsplat_problem()} | | |"
            continue
        yield attempt(
            label, out / "logs" / f"teacher-{rasterizer}.log", deadline, train_teacher_row(args, out, rasterizer)
        )
    yield attempt("demo (teachers + student), student row", out / "logs" / "demo.log", deadline, train_demo(out))


def cuda_tests(out: Path, deadline: float, cuda: bool) -> Iterator[str]:
    """The CUDA path's tests (tests/test_cuda.py), their summary line as a row (``cuda``: whether to run them)."""
    yield from ["| tests | result |", "|---|---|"]
    if not cuda:
        yield "| tests/test_cuda.py | no GPU |"
        return
    log = out / "logs" / "test_cuda.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    tests = REPO_ROOT / "tests" / "test_cuda.py"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)]
    try:
        run_group(command, log, max(30.0, min(180.0, deadline - time.perf_counter())))
        yield f"| tests/test_cuda.py | {last_line(log)} |"
    except subprocess.TimeoutExpired:
        yield f"| tests/test_cuda.py | stopped at its time limit (log: {log}) |"
    except (subprocess.CalledProcessError, OSError) as error:
        yield f"| tests/test_cuda.py | {one_line(error)}: {last_line(log)} (log: {log}) |"


def main() -> None:
    args = tyro.cli(Args)
    deadline = time.perf_counter() + args.budget_s
    with contextlib.ExitStack() as stack:
        out = args.output_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        out.mkdir(parents=True, exist_ok=True)
        report = stack.enter_context(open(out / "gpu_check.md", "w"))

        def emit(line: str = "") -> None:
            print(line, flush=True)
            report.write(line + "\n")
            report.flush()

        scene = load_scene(args.scene)
        cuda = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
        if torch.cuda.is_available():
            print("loading gsplat's CUDA kernels (the first use compiles them: minutes)...", flush=True)
        start = time.perf_counter()
        gsplat = gsplat_problem() or f"ok ({time.perf_counter() - start:.0f} s to load)"
        emit(f"torch {torch.__version__} (CUDA {torch.version.cuda}); device: {cuda}; gsplat: {gsplat}")
        tables = (
            lambda: cuda_tests(out, deadline, torch.cuda.is_available()),
            lambda: agreement_table(scene, args),
            lambda: timing_table(scene, args),
            lambda: training_table(args, out, deadline),
        )
        for table in tables:
            emit()
            for line in table():
                emit(line)


if __name__ == "__main__":
    main()
