"""The run's evaluation stages: test-split figures of every model, strip views, the PLY and the report page's view,
and the student's compact and viewer files evaluated as what they decode to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distilled3dgs_ns.checkpoints import (
    load_pipeline,
)
from distilled3dgs_ns.run.config import RunConfig, device_type_of
from distilled3dgs_ns.stages import StageBook, fingerprint, write_json_atomic


@dataclass
class Evaluator:
    """Evaluates the run's trained models in this process and writes their files (``output_dir``'s export/ and
    views/), each evaluation a stage of ``book``."""

    config: RunConfig
    output_dir: Path
    book: StageBook
    data: Path
    log: Callable[[str], None] = print

    def stage_eval(self, name: str, record: dict[str, Any], student: bool) -> dict[str, Any]:
        """Test-split figures, strip views and PLY export of one trained model (and the compact file of the student)."""
        from distilled3dgs_ns.compression.compact_format import FORMAT_VERSION
        from distilled3dgs_ns.evaluation import evaluate_pipeline

        stage = f"eval-{name}"
        cfg = self.config
        settings = {"model": record["fingerprint"], "views": cfg.eval_views, "strip": cfg.strip_views}
        if cfg.compact and student:
            settings["compact"] = {"format": FORMAT_VERSION, "finetune_steps": cfg.compact_finetune_steps}
        else:
            settings["compact"] = False
        if student:  # only the student's evaluation writes files (teachers' fingerprints stay as they were)
            settings["files"] = list(cfg.viewer_formats)
        key = fingerprint(settings)
        existing = self.book.check(stage, key)
        if existing is not None:
            self.log(f"{stage}: finished earlier, skipping")
            return existing
        pipeline = load_pipeline(Path(record["config"]), data=self.data, device=device_type_of(cfg))
        views_dir = self.output_dir / "views" / name
        result = evaluate_pipeline(
            pipeline,
            cfg.eval_views,
            keep_views=cfg.strip_views,
            render_repeats=cfg.render_repeats,
            label=stage,
            keep_rgb=student,
        )
        save_views(views_dir, result.ground_truth, result.renders)
        from distilled3dgs_ns.compression import gaussians_of

        gaussians = gaussians_of(pipeline.model)  # what the files hold: the visible Gaussians
        write_page_view(pipeline, gaussians, self.output_dir / "views", name)
        exports = self.output_dir / "export"
        ply = export_ply(gaussians, exports / f"{name}.ply")
        figures: dict[str, Any] = {**result.figures, "size_mb": ply.stat().st_size / 1e6, "ply": str(ply)}
        models = {name: {**figures, "train_s": record["train_s"]}}
        if student:
            models.update(self.student_files(pipeline, Path(record["config"]), exports, record["train_s"], result.rgb))
        return self.book.finish(stage, key, models=models, views=str(views_dir))

    def student_files(
        self, pipeline: Any, config: Path, exports: Path, train_s: float, reference: list[Any]
    ) -> dict[str, dict[str, Any]]:
        """Write the trained student's compact file and viewer files (these in the capture's frame), then evaluate
        what each decodes to (rows ``student-compact``, ``student-spz``...), with ``psnr_vs_model`` against the
        student's own renders."""
        from distilled3dgs_ns.compression import apply_to_model, read_gaussians, write_files
        from distilled3dgs_ns.compression.frame import Similarity, from_capture
        from distilled3dgs_ns.evaluation import evaluate_pipeline

        cfg = self.config
        dataparser = Similarity.of_run(config)
        steps = cfg.compact_finetune_steps if cfg.compact else None
        files = write_files(pipeline, dataparser, exports, "student", cfg.viewer_formats, steps)
        rows: dict[str, dict[str, Any]] = {}
        for kind, (path, export_s) in files.items():
            decoded = read_gaussians(path, pipeline.model.config.sh_degree)
            apply_to_model(pipeline.model, decoded if kind == "compact" else from_capture(decoded, dataparser))
            result = evaluate_pipeline(
                pipeline, cfg.eval_views, render_repeats=cfg.render_repeats, label=f"eval-student-{kind}",
                reference=reference,
            )  # fmt: skip
            figures = dict(result.figures)
            figures["psnr_vs_model"] = figures.pop("psnr_vs_reference")
            figures |= {"size_mb": path.stat().st_size / 1e6, "file": str(path), "train_s": train_s}
            rows[f"student-{kind}"] = figures | {"export_s": export_s}
        return rows


def save_views(folder: Path, ground_truth: list, renders: list) -> None:
    """Keep the strip views as PNGs (gt_<i>.png, render_<i>.png) for the report."""
    import imageio.v2 as imageio

    folder.mkdir(parents=True, exist_ok=True)
    for index, (gt, render) in enumerate(zip(ground_truth, renders, strict=True)):
        imageio.imwrite(folder / f"gt_{index}.png", gt)
        imageio.imwrite(folder / f"render_{index}.png", render)


def write_page_view(pipeline: Any, gaussians: Any, views: Path, name: str) -> None:
    """What report.html shows of a model (``gaussians``, in nerfstudio's frame): its ``.splat`` records and the
    pipeline's first test camera."""
    from distilled3dgs_ns.compression.splat import splat_bytes
    from distilled3dgs_ns.durable import write_atomic
    from distilled3dgs_ns.report_html import camera_file, camera_json, splat_file

    views.mkdir(parents=True, exist_ok=True)
    write_atomic(splat_file(views, name), splat_bytes(gaussians))
    camera = pipeline.datamanager.fixed_indices_eval_dataloader[0][0]
    write_json_atomic(camera_file(views), camera_json(camera, gaussians.means))


def export_ply(gaussians: Any, path: Path) -> Path:
    """The Gaussians as a standard 3DGS PLY (what ns-export gaussian-splat writes)."""
    from distilled3dgs_ns.compression import write_ply

    path.parent.mkdir(parents=True, exist_ok=True)
    write_ply(path, gaussians)
    return path
