"""The report of a ``distilled3dgs-run``: ``report.md``, ``report.json``, a PSNR-vs-size plot and a strip of views.

``report.json`` holds ``models.<name>`` with ``psnr``, ``cc_psnr`` (after each render's colours are fitted to its
photo), ``ssim``, ``lpips`` (null when LPIPS weights are unavailable offline), ``num_gaussians``, ``size_mb`` (the
file on disk: PLY, or for ``student-<format>`` rows the compact or viewer file, whose row also has ``file`` and
``psnr_vs_model``), ``render_ms`` (median per test frame on the evaluation device) and ``train_s`` (wall time of the
training, all attempts). The strip shows, per test view, ground truth | the
teachers' blend | the student | the student's absolute error.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np

from distilled3dgs_ns.report_html import write_report_html
from distilled3dgs_ns.stages import write_json_atomic

REPORT_KEYS = ("psnr", "cc_psnr", "ssim", "lpips", "num_gaussians", "size_mb", "render_ms", "train_s")
ERROR_MAP_MAX = 0.25
"""Absolute error (mean over RGB) shown at full colour in the strip's error maps."""


def collect_models(evaluations: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``models.<name>`` of every evaluation stage record, with the report keys always present (None when missing)."""
    models: dict[str, dict[str, Any]] = {}
    for record in evaluations.values():
        for name, figures in record["models"].items():
            models[name] = {key: figures.get(key) for key in REPORT_KEYS} | {
                k: v for k, v in figures.items() if k not in REPORT_KEYS
            }
    return models


def colour_corrected_difference(student: dict[str, Any], baseline: dict[str, Any]) -> str:
    """``; colour-corrected +0.09 dB`` where both evaluations have the colour-corrected PSNR, else nothing."""
    if student.get("cc_psnr") is None or baseline.get("cc_psnr") is None:
        return ""
    return f"; colour-corrected {student['cc_psnr'] - baseline['cc_psnr']:+.2f} dB"


def markdown_table(models: dict[str, dict[str, Any]]) -> str:
    def cell(value: Any, digits: int) -> str:
        if value is None:
            return "n/a"
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    lines = [
        "| model | PSNR | PSNR (colour-corrected) | SSIM | LPIPS | #Gaussians | size (MB) | render (ms/frame) "
        "| train (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in models.items():
        lines.append(
            f"| {name} | {cell(m['psnr'], 2)} | {cell(m.get('cc_psnr'), 2)} | {cell(m['ssim'], 4)} | "
            f"{cell(m['lpips'], 4)} | {m['num_gaussians']} | "
            f"{cell(m['size_mb'], 3)} | {cell(m['render_ms'], 1)} | {cell(m['train_s'], 0)} |"
        )
    return "\n".join(lines)


def plot_psnr_vs_count(models: dict[str, dict[str, Any]], path: Path) -> Path:
    """Scatter of test PSNR against Gaussian count (log scale), one labelled point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, StrMethodFormatter

    figure, axes = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for index, (name, m) in enumerate(models.items()):
        if m["psnr"] is None:
            continue
        marker = "o" if name.startswith("teacher") else "s" if name.startswith("baseline") else "*"
        axes.scatter(m["num_gaussians"], m["psnr"], marker=marker, s=80 if marker == "*" else 40)
        offset = (6, 10 - 9 * (index % 3))  # teachers share a count: stagger their labels vertically
        axes.annotate(name, (m["num_gaussians"], m["psnr"]), textcoords="offset points", xytext=offset, fontsize=8)
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.margins(x=0.25, y=0.15)
    axes.set_xlabel("#Gaussians")
    axes.set_ylabel("test PSNR (dB)")
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def error_map(render: np.ndarray, ground_truth: np.ndarray) -> np.ndarray:
    """``|render - gt|`` averaged over RGB, coloured with 'inferno' on [0, ERROR_MAP_MAX]; uint8 ``[H, W, 3]``."""
    from matplotlib import colormaps

    error = np.abs(render.astype(np.float32) - ground_truth.astype(np.float32)).mean(axis=-1) / 255.0
    coloured = colormaps["inferno"](np.clip(error / ERROR_MAP_MAX, 0.0, 1.0))[..., :3]
    return (coloured * 255).round().astype(np.uint8)


def picture_strip(views: Path, teacher_names: list[str], student: str, path: Path) -> Path | None:
    """Rows of ground truth | teacher blend | student | error map, one row per kept test view.

    The blend is the plain mean of the teachers' renders, the student's default target (``--pipeline.teacher-weights``
    is not reflected here)."""
    import imageio.v2 as imageio

    rows = []
    index = 0
    while (views / student / f"gt_{index}.png").exists():
        gt = imageio.imread(views / student / f"gt_{index}.png")[..., :3]
        render = imageio.imread(views / student / f"render_{index}.png")[..., :3]
        teachers = [
            imageio.imread(views / t / f"render_{index}.png")[..., :3].astype(np.float32) for t in teacher_names
        ]
        blend = np.mean(teachers, axis=0).round().astype(np.uint8) if teachers else np.zeros_like(gt)
        rows.append(np.concatenate([gt, blend, render, error_map(render, gt)], axis=1))
        index += 1
    if not rows:
        return None
    imageio.imwrite(path, np.concatenate(rows, axis=0))
    return path


def file_lines(models: dict[str, dict[str, Any]]) -> list[str]:
    """Report lines on the student's compact and viewer files: bytes per Gaussian, PSNR against the model."""
    files = {name: m for name, m in models.items() if m.get("psnr_vs_model") is not None}
    if not files:
        return []
    lines = ["", "The student's files (PSNR of each file's renders against the student's own renders):", ""]
    for name, m in files.items():
        per_gaussian = m["size_mb"] * 1e6 / max(m["num_gaussians"], 1)
        lines.append(
            f"- {name}: `{Path(m['file']).name}`, {m['size_mb']:.3f} MB ({per_gaussian:.1f} B/Gaussian), "
            f"{m['psnr_vs_model']:.2f} dB against the model"
        )
    return lines


def write_report(output_dir: Path, config: Any, evaluations: dict[str, dict[str, Any]], device: str) -> Path:
    """Write report.json, report.md (and the same as report.html, with the student in 3-D) and the pictures; returns
    the path of report.md."""
    models = collect_models(evaluations)
    teacher_names = [name for name in evaluations if name.startswith("teacher")]
    plot = plot_psnr_vs_count(models, output_dir / "psnr_vs_gaussians.png")
    strip = picture_strip(output_dir / "views", teacher_names, "student", output_dir / "views_strip.png")
    summary = {
        "data": str(config.data) if config.data is not None else "embedded scene",
        "preset": config.preset,
        "teacher_steps": config.teacher_steps,
        "student_steps": config.student_steps,
        "variants": list(config.variants),
        "teacher_terms": config.teacher_terms,
        "device": device,
        "machine": platform.platform(),
    }
    report = {
        "run": summary,
        "models": models,
        "pictures": {"psnr_vs_gaussians": plot.name, "views_strip": strip.name if strip else None},
    }
    write_json_atomic(output_dir / "report.json", report)
    teacher = models.get("teacher-standard")
    lines = [
        "# Distilled-3DGS run report",
        "",
        f"Scene: {summary['data']}; preset: {config.preset or 'none'}; teachers {config.teacher_steps} steps, "
        f"student {config.student_steps} steps; device: {device}.",
        "",
        markdown_table(models),
        "",
        "size: the file on disk (standard 3DGS PLY; for `student-<format>` rows the file itself). render: median time "
        "per test frame. colour-corrected: each render's colours fitted to its photo first, which forgives the "
        "photos' own exposure and white balance (real captures).",
    ]
    lines += file_lines(models)
    student = models.get("student")
    if teacher and student and teacher["num_gaussians"]:
        share = student["num_gaussians"] / teacher["num_gaussians"]
        lines.append(
            f"\nThe student keeps {100 * share:.1f}% of the standard teacher's Gaussians at "
            f"{student['psnr'] - teacher['psnr']:+.2f} dB."
        )
    baselines = {name: m for name, m in models.items() if name.startswith("baseline") and m["psnr"] is not None}
    if student and baselines:
        lines += ["", "Same-budget baselines (student's PSNR minus the baseline's, at their counts):", ""]
        lines += [
            f"- {name}: {student['psnr'] - m['psnr']:+.2f} dB ({m['num_gaussians']} Gaussians, student "
            f"{student['num_gaussians']}{colour_corrected_difference(student, m)})"
            for name, m in baselines.items()
        ]
        if config.student_is_no_kd and "baseline-no-kd" in baselines:
            lines.append(
                "- (the student learned from the ground truth alone, from the model's own points: baseline-no-kd is "
                "the student itself, not trained twice)"
            )
        elif config.student_init == "teacher" and "baseline-no-kd" in baselines:
            lines.append(
                "- (baseline-no-kd learned without teachers: the student's recipe from the model's own points instead "
                "of the teacher's Gaussians, densified first)"
            )
    lines += ["", f"![PSNR against #Gaussians]({plot.name})", ""]
    if strip is not None:
        lines += [
            f"Test views: ground truth | teachers' blend | student | student's error (0 to {ERROR_MAP_MAX}):",
            "",
            f"![views]({strip.name})",
            "",
        ]
    path = output_dir / "report.md"
    path.write_text("\n".join(lines))
    write_report_html(output_dir, "\n".join(lines))
    print(markdown_table(models))
    return path
