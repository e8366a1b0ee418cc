"""Time the scoring of one student budget cut on a trained splat: the blending weights from a render's backward plus
the top contributors from a forward pass (how the cuts scored before), against both from one forward pass
(``significance.training_top_contributions``, what the student uses now). Prints the median of --repeats and checks
that both give the same scores.

    python benchmarks/prune_pass.py --load-config outputs/demo/runs/teacher-standard/*/run/config.yml
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro
from torch import Tensor

from distilled3dgs_ns.checkpoints import load_pipeline
from distilled3dgs_ns.pruning import accumulated_blending_weight
from distilled3dgs_ns.rasterization import rasterization
from distilled3dgs_ns.significance import training_hit_counts, training_top_contributions


@dataclass
class Args:
    load_config: Path
    """config.yml of a trained splat (the demo's standard teacher is the student's first cut)."""
    data: Path | None = None
    """Scene folder, if it moved since training."""
    repeats: int = 3
    """Timed repeats of each way (the median is printed)."""


def main() -> None:
    args = tyro.cli(Args)
    model = (pipeline := load_pipeline(args.load_config, data=args.data, test_mode="val")).model
    cameras = pipeline.datamanager.train_dataset.cameras

    def render(colors: Tensor, camera) -> Tensor:
        geometry = model.frozen_geometry(camera)
        return rasterization(**geometry, colors=colors, packed=False, sh_degree=None, backend="torch")[0]

    def two_passes() -> tuple[Tensor, Tensor]:
        views = [cameras[i : i + 1] for i in range(len(cameras))]
        weights = accumulated_blending_weight(render, model.num_points, views)
        return weights, training_hit_counts(model, cameras, top_contributor=True)

    def one_pass() -> tuple[Tensor, Tensor]:
        tops, weights = training_top_contributions(model, cameras)
        return weights, tops

    print(f"{model.num_points} Gaussians, {len(cameras)} training views, {torch.get_num_threads()} threads")
    results = {}
    for name, way in (("backward + forward (before)", two_passes), ("one forward pass (now)", one_pass)):
        results[name] = timed(way, args.repeats)
        print(f"{name}: {results[name][0]:.2f} s")
    (first, scores_a), (_, scores_b) = results.values()
    same = torch.allclose(scores_a[0], scores_b[0], rtol=1e-4, atol=1e-5) and torch.equal(scores_a[1], scores_b[1])
    print(f"same scores: {same}; speed-up {first / results['one forward pass (now)'][0]:.1f}x")
    sys.exit(0 if same else 1)


def timed(way: Callable[[], tuple[Tensor, Tensor]], repeats: int) -> tuple[float, tuple[Tensor, Tensor]]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        scores = way()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), scores


if __name__ == "__main__":
    main()
