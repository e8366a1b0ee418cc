"""Depth-regularised teachers against plain ones, on the embedded scene with depth maps degraded as monocular ones.

Makes its own scene (no arguments needed): the embedded scene with exact depth maps, whose training maps are then
rewritten as ``a / z + b`` with a random ``a`` and ``b`` per image (what a monocular estimator gives: relative
inverse depth), so the teacher has to fit each map to the sparse points as it would on a real capture. Trains a
standard teacher with the depth loss and one without (both read the maps, so both are evaluated against the exact
test maps), optionally a student from each, and ends with one line:

    depth error: with X, without Y (Z% lower); PSNR with A, without B

X and Y are ``depth_abs_rel``, the mean absolute relative depth error on the test views (what distilled3dgs-eval
reports when test depth maps exist). Run it alone on the machine: it trains on every core.

    python benchmarks/depth_teacher.py                    # 1500-step teachers, 3000-step students (2 cores: ~15 min)
    python benchmarks/depth_teacher.py --student-steps 0  # teachers only
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import tyro

from distilled3dgs_ns.scenes import EmbeddedSceneConfig, make_depth_relative, write_embedded_scene


@dataclass
class Args:
    output_dir: Path = Path("outputs/benchmarks/depth_teacher")
    """The scene, the trainings and depth_teacher.json go here."""
    steps: int = 1500
    """Teacher steps (the demo preset's)."""
    student_steps: int = 3000
    """Student steps (teacher start, cut to student_share of it, the demo preset's recipe); 0: no students."""
    student_share: float = 0.148
    """The students' Gaussian budget as a share of their teacher's count."""
    image_size: int = 100
    depth_weight: float = 1.0
    """Initial weight of the depth loss (decays to depth_weight_final)."""
    depth_weight_final: float = 0.3
    """Its weight at the end (the model's default; the official code's 0.01 ends the loss too early in short runs)."""
    device: str = "cpu"
    extra: str = ""
    """Further ns-train options for every training, one string."""


def schedule(steps: int) -> list[str]:
    """The demo preset's CPU schedule for a run of ``steps`` steps."""
    return [
        "--pipeline.model.warmup-length", str(steps // 10),
        "--pipeline.model.stop-split-at", str(steps // 2),
        "--pipeline.model.sh-degree-interval", str(max(1, steps // 8)),
        "--pipeline.model.resolution-schedule", str(steps),
        "--pipeline.model.refine-every", "50",
        "--optimizers.means.scheduler.max-steps", str(10 * steps),
        "--pipeline.model.background-color", "white",
        "--pipeline.model.num-downscales", "0",
        "--pipeline.model.reset-alpha-every", "10",
        "--pipeline.model.cull-alpha-thresh", "0.005",
        "--pipeline.model.stop-screen-size-at", "0",
        # the maps are read by both teachers (relative for training, the exact ones for the test split's metric)
        "--pipeline.datamanager.depth-maps", "relative",
        "--pipeline.datamanager.depth-test-maps", "metric",
    ]  # fmt: skip


def train(args: Args, scene: Path, method: str, name: str, steps: int, options: list[str]) -> tuple[Path, float]:
    """One ns-train run (skipped when its final checkpoint exists); returns its config.yml and the wall time."""
    folder = args.output_dir / "runs" / name / method / "bench"
    if any((folder / "nerfstudio_models").glob("step-*.ckpt")):
        return folder / "config.yml", float("nan")
    command = [
        "ns-train", method, "--data", str(scene), "--output-dir", str(args.output_dir / "runs"),
        "--experiment-name", name, "--timestamp", "bench", "--max-num-iterations", str(steps),
        "--steps-per-save", str(10 * steps), "--steps-per-eval-batch", "0", "--steps-per-eval-image", "0",
        "--steps-per-eval-all-images", "0", "--vis", "tensorboard", "--machine.device-type", args.device,
        *schedule(steps), *options, *shlex.split(args.extra), "nerfstudio-data",
    ]  # fmt: skip
    log = args.output_dir / f"{name}.log"
    start = time.perf_counter()
    with log.open("w") as handle:
        if subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT).returncode != 0:
            raise SystemExit(f"{name} failed; see {log}")
    return folder / "config.yml", time.perf_counter() - start


def evaluate(config: Path) -> dict[str, float]:
    """Test-split PSNR, depth_abs_rel and Gaussian count of a trained run."""
    from distilled3dgs_ns.checkpoints import load_pipeline
    from distilled3dgs_ns.evaluation import evaluate_pipeline

    figures = evaluate_pipeline(load_pipeline(config), render_repeats=0, label=config.parts[-4]).figures
    return {key: figures[key] for key in ("psnr", "depth_abs_rel", "num_gaussians")}


def student_options(teacher: Path, count: int) -> list[str]:
    """A student that starts from ``teacher`` and is cut to ``count`` Gaussians, as the demo preset trains it: 8 cuts
    from 5% to 30% of the run, the ground truth alone, an opacity L1 until the last cut."""
    return [
        "--pipeline.teachers", str(teacher), "--pipeline.init-from", str(teacher),
        "--pipeline.model.sh-degree-interval", "1", "--pipeline.model.prune-reinitialize", "False",
        "--pipeline.model.prune-count", str(count), "--pipeline.model.prune-count-at", "0.05",
        "--pipeline.model.prune-count-until", "0.3", "--pipeline.model.prune-count-stages", "8",
        "--pipeline.model.prune-sample-at", "None", "--pipeline.model.prune-mass-at", "None",
        "--pipeline.model.kd-weight", "0", "--pipeline.model.kd-weight-final", "0",
        "--pipeline.model.structure-weight", "0", "--pipeline.model.sparsity-weight", "0.03",
    ]  # fmt: skip


def main(args: Args) -> dict:
    args.output_dir.mkdir(parents=True, exist_ok=True)
    scene = write_embedded_scene(
        args.output_dir / "scene", EmbeddedSceneConfig(image_size=args.image_size, depth_maps=True), show_progress=True
    )
    make_depth_relative(scene, "train")
    depth = ["--pipeline.model.depth-weight", str(args.depth_weight)]
    depth += ["--pipeline.model.depth-weight-final", str(args.depth_weight_final)]
    rows: dict[str, dict] = {}
    for name, options in (("teacher-with-depth", depth), ("teacher-without-depth", [])):
        config, seconds = train(args, scene, "distilled3dgs-teacher", name, args.steps, options)
        rows[name] = {**evaluate(config), "train_s": seconds, "config": str(config)}
    if args.student_steps > 0:
        for kind in ("with", "without"):
            teacher = rows[f"teacher-{kind}-depth"]
            count = max(1, round(args.student_share * teacher["num_gaussians"]))
            options = student_options(Path(teacher["config"]), count)
            name = f"student-{kind}"
            config, seconds = train(args, scene, "distilled3dgs-student", name, args.student_steps, options)
            rows[f"student-of-teacher-{kind}-depth"] = {**evaluate(config), "train_s": seconds, "config": str(config)}
    (args.output_dir / "depth_teacher.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("| model | test PSNR | depth_abs_rel | #Gaussians | train (s) |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['psnr']:.2f} | {row['depth_abs_rel']:.4f} | {row['num_gaussians']} | "
            f"{row['train_s']:.0f} |"
        )
    with_depth, without = rows["teacher-with-depth"], rows["teacher-without-depth"]
    lower = 100 * (1 - with_depth["depth_abs_rel"] / without["depth_abs_rel"])
    print(
        f"depth error: with {with_depth['depth_abs_rel']:.4f}, without {without['depth_abs_rel']:.4f} "
        f"({lower:.0f}% lower); PSNR with {with_depth['psnr']:.2f}, without {without['psnr']:.2f}"
    )
    return rows


if __name__ == "__main__":
    main(tyro.cli(Args))
