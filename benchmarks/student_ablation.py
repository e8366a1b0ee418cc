"""Ablations of the student on a finished ``distilled3dgs-run``: its own ns-train command with options changed.

Each variant reuses the run's trained teachers and the student's exact command line (from ``runs/student.log``), adds
its options after the recipe's (so they win), trains into ``<run>/ablation/<name>`` and is evaluated on the test split
beside the run's own rows (report.json). Trainings run ``--jobs`` at a time, single-threaded each on a CPU.

    python benchmarks/student_ablation.py --run outputs/fox --jobs 2 \\
        --variant "novel-views=--pipeline.pseudo-view-rate 0.25 --pipeline.pseudo-view-mode interpolate"
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from nerfstudio.configs.dataparser_configs import all_dataparsers

DATAPARSERS = frozenset(all_dataparsers)
"""ns-train's dataparser subcommands (plugins' too), which end the method's options on its command line."""


def student_command(run: Path) -> list[str]:
    """The student's ns-train command as the run logged it (its first line, ``$ ns-train ...``)."""
    first = (run / "runs" / "student.log").read_text().splitlines()[0]
    if not first.startswith("$ ns-train "):
        sys.exit(f"{run}/runs/student.log does not start with the ns-train command: is {run} a distilled3dgs-run?")
    return shlex.split(first[2:])


def without_flags(command: list[str], flags: set[str]) -> list[str]:
    """``command`` less every occurrence of ``flags`` and their values (the words up to the next option)."""
    kept: list[str] = []
    skipping = False
    for word in command:
        if word.startswith("--") or word in DATAPARSERS:
            skipping = word in flags
        if not skipping:
            kept.append(word)
    return kept


def variant_command(base: list[str], run: Path, name: str, options: list[str]) -> list[str]:
    """``base`` trained into ``<run>/ablation/<name>``, each flag of ``options`` replacing the recipe's (a list option
    such as --pipeline.teachers too), placed before the dataparser's subcommand."""
    command = without_flags(base, {word for word in options if word.startswith("--")})
    for flag, value in (("--output-dir", str(run / "ablation")), ("--experiment-name", name)):
        command[command.index(flag) + 1] = value
    parser = next(i for i, word in enumerate(command) if word in DATAPARSERS)
    return [*command[:parser], *options, *command[parser:]]


def train_and_evaluate(run: Path, name: str, command: list[str], threads: int) -> dict:
    folder = run / "ablation" / name
    result = folder / "eval.json"
    if result.exists():
        return json.loads(result.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    with open(folder / "train.log", "w") as log:
        log.write("$ " + shlex.join(command) + "\n")
        log.flush()
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=True)
    seconds = time.perf_counter() - start
    config = folder / "distilled3dgs-student" / "run" / "config.yml"
    evaluate = ["distilled3dgs-eval", "--load-config", str(config), "--render-repeats", "1"]
    subprocess.run([*evaluate, "--output-path", str(result)], env=env, check=True, capture_output=True)
    figures = json.loads(result.read_text()) | {"train_s": seconds}
    result.write_text(json.dumps(figures, indent=2))
    return figures


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, options = text.partition("=")
    if not name or "/" in name:
        sys.exit(f"--variant takes NAME=OPTIONS, got '{text}'")
    return name, shlex.split(options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished distilled3dgs-run output folder")
    parser.add_argument("--variant", action="append", default=[], help="NAME=ns-train options (repeatable)")
    parser.add_argument("--jobs", type=int, default=1, help="trainings at a time (single-threaded each when > 1)")
    args = parser.parse_args(argv)
    base = student_command(args.run)
    variants = dict(parse_variant(text) for text in args.variant)
    threads = 1 if args.jobs > 1 else (os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {}
        for name, options in variants.items():
            command = variant_command(base, args.run, name, options)
            futures[name] = pool.submit(train_and_evaluate, args.run, name, command, threads)
        results = {name: future.result() for name, future in futures.items()}
    report = json.loads((args.run / "report.json").read_text())
    print(f"| model ({args.run}) | test PSNR | SSIM | #Gaussians |")
    print("|---|---|---|---|")
    for name, figures in [*report["models"].items(), *results.items()]:
        print(f"| {name} | {figures['psnr']:.2f} | {figures['ssim']:.4f} | {figures['num_gaussians']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
