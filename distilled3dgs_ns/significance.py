"""LightGaussian's global significance of a trained splat over its training views.

``score_i = hits_i * opacity_i * V_norm_i^beta``: ``hits_i`` is the number of training pixels where Gaussian ``i``
takes part in compositing, counted by the pure-PyTorch rasteriser's hit pass (one view at a time, no gradients, so
memory stays at one render whatever the number of views). It ranks Gaussians for pruning (the student's
``prune_score``) and for choosing which ones get vector-quantised in a compact export.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from nerfstudio.cameras.cameras import Cameras
from torch import Tensor

from distilled3dgs_ns.portable_splatfacto import PortableSplatfactoModel
from distilled3dgs_ns.pruning import global_significance
from distilled3dgs_ns.rasterization import hit_counts, top_contributions


@torch.no_grad()
def training_hit_counts(
    model: PortableSplatfactoModel,
    cameras: Cameras,
    progress: Callable[[int], None] | None = None,
    top_contributor: bool = False,
) -> Tensor:
    """Per Gaussian, the pixels of all ``cameras`` (full resolution) it is composited at ``[N]`` (int64); with
    ``top_contributor``, those where it has the pixel's largest blending weight.

    Rendered as the model renders (activated opacities and scales, its ``rasterize_mode``); ``progress(k)`` is
    called after the k-th view.
    """
    hits = torch.zeros(model.num_points, dtype=torch.int64, device=model.means.device)
    cameras = cameras.flatten()
    for k in range(len(cameras)):
        hits += hit_counts(**model.frozen_geometry(cameras[k : k + 1]), top_contributor=top_contributor)[0]
        if progress is not None:
            progress(k + 1)
    return hits


@torch.no_grad()
def training_top_contributions(model: PortableSplatfactoModel, cameras: Cameras) -> tuple[Tensor, Tensor]:
    """Per Gaussian, over all ``cameras`` (full resolution): the pixels where it is the top contributor ``[N]``
    (int64) and its blending weight summed over the pixels ``[N]``, one forward pass per view (see
    ``training_hit_counts``)."""
    tops = torch.zeros(model.num_points, dtype=torch.int64, device=model.means.device)
    weights = torch.zeros(model.num_points, device=model.means.device)
    cameras = cameras.flatten()
    for k in range(len(cameras)):
        view_tops, view_weights = top_contributions(**model.frozen_geometry(cameras[k : k + 1]))
        tops += view_tops[0]
        weights += view_weights[0].to(weights)
    return tops, weights


@torch.no_grad()
def significance_scores(
    model: PortableSplatfactoModel,
    cameras: Cameras,
    beta: float = 0.1,
    volume_percentile: float = 0.9,
    progress: Callable[[int], None] | None = None,
) -> Tensor:
    """LightGaussian's global significance ``[N]`` of ``model``'s Gaussians over ``cameras`` (all training views).

    ``beta`` weighs the normalised volume (0: hit count times opacity only); the volume is normalised by its
    ``volume_percentile`` percentile and clipped to 1. ``progress(k)`` is called after the k-th view.
    """
    hits = training_hit_counts(model, cameras, progress)
    opacities = torch.sigmoid(model.opacities.detach()).squeeze(-1)
    return global_significance(hits, opacities, torch.exp(model.scales.detach()), beta, volume_percentile)
