"""How many training views each Gaussian of a trained splat wins pixels in, and what removing the few-view ones costs.

A cleaned teacher start would drop floaters before the student's cuts: Gaussians that dominate pixels of a single
training view are the usual suspects on real captures. This prints, per number of views won, how many Gaussians
there are and how many of them the student's top-contributions cut to ``--count`` keeps, then the test PSNR of the
splat as it is, with only the Gaussians that win pixels in at least 2 and 3 views, and after that cut with and
without the multi-view condition (no training: what each start renders before fine-tuning).

    python benchmarks/view_consistency.py --load-config outputs/monstree/runs/teacher-standard/*/run/config.yml \
        --count 12619
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import tyro
from torch import Tensor

from distilled3dgs_ns.checkpoints import load_pipeline
from distilled3dgs_ns.evaluation import evaluate_pipeline
from distilled3dgs_ns.pruning import top_contribution_score, top_count_mask
from distilled3dgs_ns.rasterization.torch_backend import top_contributions


@dataclass
class Args:
    load_config: Path
    """config.yml of a trained teacher (or any splat of this plugin)."""
    count: int
    """The student's budget: how many Gaussians the top-contributions cut keeps."""
    max_views: int = 5
    """Rows of the views-won table (the last row counts this many views or more)."""


@torch.no_grad()
def views_won(model, cameras) -> tuple[Tensor, Tensor]:
    """The top-contributions score ``[N]`` and, per Gaussian, the training views it wins at least one pixel in."""
    tops = torch.zeros(model.num_points, dtype=torch.int64)
    weights = torch.zeros(model.num_points)
    views = torch.zeros(model.num_points, dtype=torch.int64)
    for k in range(len(cameras)):
        view_tops, view_weights = top_contributions(**model.frozen_geometry(cameras[k : k + 1]))
        tops += view_tops[0].cpu()
        weights += view_weights[0].cpu().to(weights)
        views += (view_tops[0] > 0).cpu()
    return top_contribution_score(tops, weights), views


def main(args: Args) -> None:
    pipeline = load_pipeline(args.load_config, device="cpu")
    model = pipeline.model
    cameras = pipeline.datamanager.train_dataset.cameras
    score, views = views_won(model, cameras)
    kept = top_count_mask(score, args.count)
    print(f"{model.num_points} Gaussians, {len(cameras)} training views")
    print("| views won | Gaussians | kept by the cut |\n|---|---|---|")
    for v in range(args.max_views + 1):
        rows = views >= v if v == args.max_views else views == v
        label = f">= {v}" if v == args.max_views else str(v)
        print(f"| {label} | {int(rows.sum())} | {int((rows & kept).sum())} |")
    full = {name: param.detach().clone() for name, param in model.gauss_params.items()}
    multi_view_score = torch.where(views >= 2, score, torch.zeros_like(score))
    variants = {
        "as trained": torch.ones_like(kept),
        "wins in >= 2 views": views >= 2,
        "wins in >= 3 views": views >= 3,
        f"top-contributions cut to {args.count}": kept,
        "the cut among >= 2-view winners": top_count_mask(multi_view_score, args.count),
    }
    print("\n| splat | Gaussians | test PSNR |\n|---|---|---|")
    for label, mask in variants.items():
        for name, value in full.items():
            model.gauss_params[name] = torch.nn.Parameter(value[mask.to(value.device)])
        psnr = evaluate_pipeline(pipeline, render_repeats=0).figures["psnr"]
        print(f"| {label} | {int(mask.sum())} | {psnr:.2f} |")


if __name__ == "__main__":
    main(tyro.cli(Args))
