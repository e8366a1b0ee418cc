"""A loaded pipeline (or model) to a compact file in one call: significance, VQ, optional fine-tuning, write."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.models.splatfacto import SplatfactoModel

from distilled3dgs_ns.compression.compact_format import (
    DEFAULT_COMPRESSION,
    CompactGaussians,
    Compression,
    write_compact,
)
from distilled3dgs_ns.compression.encode import VQOptions, encode_gaussians, needs_scores
from distilled3dgs_ns.compression.finetune import FinetuneOptions, finetune_compact
from distilled3dgs_ns.compression.formats import FORMATS, read_gaussians
from distilled3dgs_ns.compression.frame import Similarity, to_capture
from distilled3dgs_ns.compression.model_io import gaussians_of, model_of, model_params
from distilled3dgs_ns.progress import progress_bar
from distilled3dgs_ns.significance import significance_scores

PLY_HEADER_BYTES = 1000
"""About what a 3DGS PLY header takes (its property list), for the uncompressed-size figure."""


@dataclass
class CompactOptions(VQOptions):
    """Everything ``export_compact`` can be told (VQ, file compression, significance, fine-tuning)."""

    compression: Compression = DEFAULT_COMPRESSION
    """Payload compression (stdlib). Demo student at the defaults: zlib 33.4 KB, lzma 31.7 KB (-5%, both well under
    a second)."""
    significance_beta: float = 0.1
    """LightGaussian's volume exponent in the significance score that picks the Gaussians to quantise."""
    volume_percentile: float = 0.9
    """Volumes are normalised by this percentile (and clipped to 1) in the significance score."""
    finetune: FinetuneOptions = field(default_factory=FinetuneOptions)


def float32_ply_bytes(num_gaussians: int, sh_degree: int) -> int:
    """Size of a standard 3DGS PLY of that many Gaussians (62 float32 properties at SH degree 3)."""
    properties = 3 + 3 + 3 + 3 * ((sh_degree + 1) ** 2 - 1) + 1 + 3 + 4
    return num_gaussians * properties * 4 + PLY_HEADER_BYTES


def _producer() -> str:
    try:
        return f"distilled3dgs_ns {version('distilled3dgs_ns')}"
    except PackageNotFoundError:
        return "distilled3dgs_ns"


def export_compact(
    pipeline_or_model: Any,
    cameras: Cameras | None,
    output: Path | str,
    options: CompactOptions | None = None,
    progress: bool = True,
    scores: torch.Tensor | None = None,
    source: str = "",
) -> dict[str, Any]:
    """Write the model of ``pipeline_or_model`` as a compact file; returns figures (sizes, counts, VQ, timings).

    ``cameras`` are the training views the significance is summed over (None: the pipeline's training cameras);
    ``scores`` replaces that significance when given. Fine-tuning (``options.finetune.steps > 0``) needs a pipeline
    (its training images) and leaves the model holding the compact scene; otherwise the model is not changed.
    """
    options = options or CompactOptions()
    start = time.perf_counter()
    model = model_of(pipeline_or_model)
    sh_degree = model.config.sh_degree
    if options.finetune.steps > 0 and not hasattr(pipeline_or_model, "datamanager"):
        raise ValueError("fine-tuning needs the training images: pass the pipeline, not the model")
    scored = needs_scores(options) and sh_degree > 0 and model.num_points > 0
    if scores is None and scored:
        scores = _significance(pipeline_or_model, model, cameras, options, progress)
    gaussians, figures = encode_gaussians(model_params(model), sh_degree, scores, options, progress)
    if options.finetune.steps > 0:
        views = pipeline_or_model.datamanager.next_train
        gaussians, losses = finetune_compact(model, gaussians, views, options.finetune, progress)
        figures["finetune_loss_first"], figures["finetune_loss_last"] = losses[0], losses[-1]
    settings = {f.name: getattr(options, f.name) for f in fields(CompactOptions)}  # not a subclass's (CLI) fields
    gaussians.metadata = {
        "producer": _producer(),
        "source": source,
        "options": {**settings, "finetune": asdict(options.finetune)},
        "num_input_gaussians": figures["num_input"],
    }
    size = write_compact(output, gaussians, options.compression)
    ply_bytes = float32_ply_bytes(figures["num_gaussians"], sh_degree)  # what ns-export writes (visible ones)
    figures.update(
        file=str(output),
        file_bytes=size,
        size_mb=size / 1e6,
        ply_mb=ply_bytes / 1e6,
        compression_ratio=ply_bytes / size,
        compression=options.compression,
        finetune_steps=options.finetune.steps,
        export_s=time.perf_counter() - start,
    )
    return figures


def _significance(
    pipeline_or_model: Any, model: SplatfactoModel, cameras: Cameras | None, options: CompactOptions, progress: bool
) -> torch.Tensor:
    """LightGaussian's global significance over the training views."""
    if cameras is None:
        datamanager = getattr(pipeline_or_model, "datamanager", None)
        if datamanager is None:
            raise ValueError("pass the training cameras (or the pipeline) to score the Gaussians' significance")
        cameras = datamanager.train_dataset.cameras
    cameras = cameras.to(model.device)
    with progress_bar(f"significance over {len(cameras)} training views", len(cameras), progress) as advance:
        return significance_scores(
            model, cameras, options.significance_beta, options.volume_percentile, progress=lambda _: advance()
        )


def write_files(
    pipeline: Any, frame: Similarity, folder: Path, stem: str, kinds: Sequence[str], compact_steps: int | None
) -> dict[str, tuple[Path, float]]:
    """Write the pipeline's model as ``folder/<stem><suffix>`` in each format of ``kinds``, in the capture's frame
    (``frame``: the run's dataparser transform), and with ``compact_steps`` also as ``<stem>.compact`` fine-tuned for
    that many steps, the formats built on a compact scene (``from_compact``) then written from it. Returns, per
    format name (and ``compact``), the file and the seconds it took. The fine-tuning leaves the model holding the
    compact scene."""
    later = [kind for kind in kinds if compact_steps is not None and FORMATS[kind].from_compact]
    files: dict[str, tuple[Path, float]] = {}

    def write(kind: str, gaussians: CompactGaussians) -> None:
        path, start = folder / f"{stem}{FORMATS[kind].suffix}", time.perf_counter()
        FORMATS[kind].write(path, gaussians)
        files[kind] = (path, time.perf_counter() - start)

    gaussians = to_capture(gaussians_of(model_of(pipeline)), frame)
    for kind in kinds:
        if kind not in later:
            write(kind, gaussians)
    if compact_steps is not None:
        path, start = folder / f"{stem}.compact", time.perf_counter()
        export_compact(pipeline, None, path, CompactOptions(finetune=FinetuneOptions(steps=compact_steps)))
        files["compact"] = (path, time.perf_counter() - start)
        scene = to_capture(read_gaussians(path), frame)
        for kind in later:
            write(kind, scene)
    return files
