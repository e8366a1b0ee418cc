"""Train one teacher with ns-train (on the CPU unless --device says otherwise), evaluate it with ns-eval, and print
a table row.

Example (the figure reported for the foundation issue):
    python benchmarks/teacher_cpu.py --data ../shared/data/lego-100 --steps 3000 --variant standard
"""

from __future__ import annotations

import contextlib
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import tyro


@dataclass
class Args:
    data: Path
    """Scene folder (Blender format unless --dataparser says otherwise)."""
    steps: int = 3000
    """Training steps."""
    variant: str = "standard"
    """Teacher variant: standard, perturbed or dropout."""
    output_dir: Path = Path("outputs/benchmarks")
    """Where ns-train writes the run and this script its JSON."""
    dataparser: str = "blender-data"
    """nerfstudio dataparser subcommand."""
    extra: str = ""
    """Further ns-train options, one string: --extra="--pipeline.model.num-random 20000"."""
    device: str = "cpu"
    """--machine.device-type of the training (cuda for the GPU check)."""


def train_command(args: Args, name: str) -> list[str]:
    """The ns-train command of one benchmark teacher; its run lands in ``run_dir(args, name)``."""
    return [
        "ns-train", "distilled3dgs-teacher", "--data", str(args.data), "--output-dir", str(args.output_dir),
        "--experiment-name", name, "--timestamp", "bench", "--pipeline.model.variant", args.variant,
        "--max-num-iterations", str(args.steps), "--machine.device-type", args.device, "--vis", "tensorboard",
        "--steps-per-eval-all-images", str(10 * args.steps), *shlex.split(args.extra), args.dataparser,
    ]  # fmt: skip


def run_dir(args: Args, name: str) -> Path:
    return args.output_dir / name / "distilled3dgs-teacher" / "bench"


def run(args: Args, log: Path | None = None, timeout_s: float | None = None) -> dict:
    """Train and evaluate; ``log`` takes both commands' output (default: the console), ``timeout_s`` bounds the two.

    Raises ``subprocess.CalledProcessError`` or ``subprocess.TimeoutExpired`` when a command fails or runs out of time.
    """
    name = f"teacher-{args.variant}-{args.steps}"
    start = time.perf_counter()
    with open(log, "a") if log else contextlib.nullcontext() as output:
        subprocess.run(train_command(args, name), check=True, stdout=output, stderr=output, timeout=timeout_s)
        train_s = time.perf_counter() - start
        config = run_dir(args, name) / "config.yml"
        eval_json = args.output_dir / f"{name}-eval.json"
        left = None if timeout_s is None else max(1.0, timeout_s - train_s)
        evaluate = ["ns-eval", "--load-config", str(config), "--output-path", str(eval_json)]
        subprocess.run(evaluate, check=True, stdout=output, stderr=output, timeout=left)
    results = json.loads(eval_json.read_text())["results"]
    return {
        "variant": args.variant,
        "steps": args.steps,
        "train_s": train_s,
        "s_per_step": train_s / args.steps,
        "num_gaussians": int(results["num_gaussians"]),
        "psnr": results["psnr"],
        "ssim": results["ssim"],
        "lpips": results.get("lpips"),
    }


def main() -> None:
    args = tyro.cli(Args)
    row = run(args)
    lpips = "n/a" if row["lpips"] is None else f"{row['lpips']:.4f}"
    print("| variant | steps | wall time (s) | s/step | #Gaussians | test PSNR | test SSIM | LPIPS |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {row['variant']} | {row['steps']} | {row['train_s']:.0f} | {row['s_per_step']:.3f} | "
        f"{row['num_gaussians']} | {row['psnr']:.2f} | {row['ssim']:.4f} | {lpips} |"
    )
    json.dump(row, sys.stdout)
    print()


if __name__ == "__main__":
    main()
