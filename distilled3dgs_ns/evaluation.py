"""Test-split evaluation of a trained splat (or of a compact file decoded into it): quality, size and render time.

``ns-eval`` reports quality only; the one-command pipeline and the compact format also need the render time per frame
and a few test views kept for pictures, from the same pass. ``distilled3dgs-eval`` exposes this on the command line,
including ``--compact FILE``, which evaluates a compact file in place of the checkpoint's Gaussians (the checkpoint's
config supplies the cameras and the test images).

Import-order rule (see method_configs.py): this module imports ``nerfstudio.utils.eval_utils`` only inside functions.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import tyro
from nerfstudio.model_components.lib_bilagrid import color_correct

from distilled3dgs_ns.checkpoints import load_pipeline
from distilled3dgs_ns.errors import one_line_errors
from distilled3dgs_ns.portable_splatfacto import PortableSplatfactoModel
from distilled3dgs_ns.progress import progress_bar

METRIC_KEYS = ("psnr", "ssim", "lpips", "depth_abs_rel")
Split = Literal["test", "train"]


@dataclass
class Evaluation:
    """Figures of one model on the test split, plus the first few test views as uint8 ``[H, W, 3]`` arrays."""

    figures: dict[str, float | int]
    ground_truth: list[np.ndarray] = field(default_factory=list)
    renders: list[np.ndarray] = field(default_factory=list)
    rgb: list[torch.Tensor] = field(default_factory=list)
    """Every test render in float (CPU), when asked for: the reference that a file of the same model is held to."""


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``[H, W, 3]`` float image in [0, 1] to uint8 (numpy)."""
    return (image.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_views(datamanager: Any) -> list[tuple[Any, dict]]:
    """The training views as (camera, batch) pairs, as ``fixed_indices_eval_dataloader`` gives the test views."""
    cameras = datamanager.train_dataset.cameras.to(datamanager.device)
    views = []
    for index, cached in enumerate(datamanager.cached_train):
        batch = {**cached, "image": cached["image"].to(datamanager.device)}
        views.append((cameras[index : index + 1], batch))
    return views


def colour_corrected_psnr(rgb: torch.Tensor, ground_truth: torch.Tensor) -> float:
    """PSNR after the render's colours are fitted to the photo's (nerfstudio's ``color_correct``, a per-image
    quadratic colour map): what remains when each photo's exposure and white balance are forgiven, which the model
    cannot know for a new view. Beside the PSNR it tells structure from exposure on real captures."""
    corrected = color_correct(rgb.clamp(0.0, 1.0), ground_truth[..., :3])
    error = ((corrected - ground_truth[..., :3]) ** 2).mean().clamp_min(1e-12)
    return float(-10 * torch.log10(error))


@torch.no_grad()
def evaluate_pipeline(
    pipeline: Any,
    max_views: int | None = None,
    keep_views: int = 0,
    render_repeats: int = 3,
    label: str = "evaluating",
    keep_rgb: bool = False,
    reference: list[torch.Tensor] | None = None,
    split: Split = "test",
) -> Evaluation:
    """Render every view of ``split`` (nerfstudio ``eval_setup`` with ``test_mode="test"``): the test views, or the
    training views, whose PSNR beside the test views' is the model's generalisation gap.

    Quality comes from the model's own ``get_image_metrics_and_images`` (what ``ns-eval`` averages). The render time is
    the median over views of ``render_repeats`` timed renders each, after the untimed metric render has warmed up.
    With ``reference`` (another evaluation's ``rgb``), ``psnr_vs_reference`` is the PSNR of these renders against
    those: how much a file loses against the model it was written from, whatever the ground truth.
    """
    model = pipeline.model
    if not isinstance(model, PortableSplatfactoModel):
        raise TypeError(f"expected a distilled3dgs model, got {type(model).__name__}")
    model.eval()
    datamanager = pipeline.datamanager
    views = training_views(datamanager) if split == "train" else datamanager.fixed_indices_eval_dataloader
    if max_views is not None:
        views = views[:max_views]
    if not views:
        raise ValueError(f"the dataset has no {split} views to evaluate on")
    per_view: dict[str, list[float]] = {}
    times: list[float] = []
    result = Evaluation(figures={})
    with progress_bar(label, len(views)) as advance:
        for index, (camera, batch) in enumerate(views):
            outputs = model.get_outputs_for_camera(camera)
            metrics, _ = model.get_image_metrics_and_images(outputs, batch)
            for key in METRIC_KEYS:
                if key in metrics:
                    per_view.setdefault(key, []).append(float(metrics[key]))
            ground_truth = model.composite_with_background(model.get_gt_img(batch["image"]), outputs["background"])
            per_view.setdefault("cc_psnr", []).append(colour_corrected_psnr(outputs["rgb"], ground_truth))
            if keep_rgb:
                result.rgb.append(outputs["rgb"].detach().cpu())
            if reference is not None:
                error = ((outputs["rgb"].detach().cpu() - reference[index]) ** 2).mean().clamp_min(1e-12)
                per_view.setdefault("psnr_vs_reference", []).append(float(-10 * torch.log10(error)))
            if index < keep_views:
                result.ground_truth.append(to_uint8(ground_truth))
                result.renders.append(to_uint8(outputs["rgb"]))
            samples = []
            for _ in range(render_repeats):
                _synchronize(model.device)
                start = time.perf_counter()
                model.get_outputs_for_camera(camera)
                _synchronize(model.device)
                samples.append(time.perf_counter() - start)
            if samples:
                times.append(statistics.median(samples))
            advance()
    result.figures = {key: statistics.fmean(values) for key, values in per_view.items()}
    result.figures["num_gaussians"] = int(model.num_points)
    result.figures["size_mb"] = float(model.size_mb)
    if times:
        result.figures["render_ms"] = 1000 * statistics.median(times)
    result.figures["num_views"] = len(views)
    return result


@dataclass
class EvalCommand:
    """Evaluate a distilled3dgs model on its test split: PSNR, SSIM, LPIPS (when available), #Gaussians, size on
    disk, render time per frame. With ``--compact``, the Gaussians of a compact file replace the checkpoint's."""

    load_config: Path
    """config.yml of the trained model (teacher or student)."""
    compact: Path | None = None
    """A file written by ``distilled3dgs-export compact``, or a viewer file (SPZ, SOG, .glb, compressed PLY, .splat)
    (``distilled3dgs-export save``): evaluate it instead of the checkpoint's Gaussians."""
    frame: Literal["capture", "nerfstudio"] = "capture"
    """The frame of a viewer file given to --compact: as ``distilled3dgs-export save --frame`` wrote it."""
    output_path: Path | None = None
    """Write the figures as JSON here (as well as printing them)."""
    max_views: int | None = None
    """Evaluate only the first N test views (default: all)."""
    render_repeats: int = 3
    """Timed renders per view for the render time (median)."""
    split: Split = "test"
    """Which views: test, or train (the training views: beside the test figures, how much the model overfits)."""

    def main(self) -> dict[str, Any]:
        pipeline = load_pipeline(self.load_config)
        source = str(self.load_config)
        if self.compact is not None:
            from distilled3dgs_ns.compression import apply_to_model, format_of, read_gaussians
            from distilled3dgs_ns.compression.frame import Similarity, from_capture

            gaussians = read_gaussians(self.compact, pipeline.model.config.sh_degree)
            if format_of(self.compact) is not None and self.frame == "capture":
                gaussians = from_capture(gaussians, Similarity.of_run(self.load_config))
            apply_to_model(pipeline.model, gaussians)
            source = str(self.compact)
        result = evaluate_pipeline(pipeline, self.max_views, render_repeats=self.render_repeats, split=self.split)
        figures: dict[str, Any] = {"source": source, "split": self.split, **result.figures}
        if self.compact is not None:
            figures["size_mb"] = self.compact.stat().st_size / 1e6
        text = json.dumps(figures, indent=2)
        print(text)
        if self.output_path is not None:
            self.output_path.parent.mkdir(parents=True, exist_ok=True)
            self.output_path.write_text(text + "\n")
        return figures


def entrypoint() -> None:
    """``distilled3dgs-eval``: bad input ends with one line saying what to do, not a traceback."""
    command = tyro.cli(EvalCommand)
    with one_line_errors("distilled3dgs-eval", also=(OSError, ValueError)):
        command.main()


if __name__ == "__main__":
    entrypoint()
