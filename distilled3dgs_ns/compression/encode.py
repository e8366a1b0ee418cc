"""Gaussian parameters to ``CompactGaussians``: K-means VQ of the SH rests, then the file's fixed point."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from distilled3dgs_ns.compression.codebook import default_codebook_size, train_codebook
from distilled3dgs_ns.compression.compact_format import CompactGaussians, decode_sections, fixed_point
from distilled3dgs_ns.pruning import lowest_share_mask

MIN_OPACITY_LOGIT = -5.5373
"""logit(1/255), rounded as ``ns-export gaussian-splat`` rounds it: below it a Gaussian never reaches the rasterisers'
alpha threshold, and ns-export leaves it out."""


@dataclass
class VQOptions:
    """Which SH rests are vector-quantised and how the codebook is trained."""

    vq_share: float = 1.0
    """Share of the Gaussians, least significant first, whose SH rest coefficients are replaced by a codebook entry;
    the others keep theirs at 8 bits (45 bytes at SH degree 3, against about 1 for an index). With every SH from the
    codebook and the fine-tuning, the file is below its SPZ's size at a smaller loss (docs/formats.md)."""
    codebook_size: int = 0
    """Codes in the K-means codebook; 0: three per square root of the quantised vectors, at most LightGaussian's 8192
    (see ``default_codebook_size``)."""
    kmeans_iterations: int = 20
    """Lloyd iterations at most (stops earlier once the assignment no longer changes)."""
    seed: int = 0
    """Seed of the k-means++ initialisation; the same seed gives the same file."""
    drop_invisible: bool = True
    """Drop Gaussians that cannot show (opacity < 1/255, non-finite or zero-norm quaternion), as
    ``ns-export gaussian-splat`` does, so the decoded PLY matches its export."""


def needs_scores(options: VQOptions) -> bool:
    """Whether encoding needs the Gaussians' significance: to choose the ones to quantise (not all, not none).
    (Weighing the k-means by it was tried: 0.03-0.05 dB worse on the demo student.)"""
    return 0 < options.vq_share < 1


def visible_mask(params: Mapping[str, Tensor]) -> Tensor:
    """``[N]`` bool: finite parameters, opacity >= 1/255 and a non-zero quaternion."""
    n = params["means"].shape[0]
    finite = torch.ones(n, dtype=torch.bool, device=params["means"].device)
    for value in params.values():
        finite &= torch.isfinite(value).flatten(1).all(dim=1) if value.ndim > 1 else torch.isfinite(value)
    opaque = params["opacities"].reshape(n) >= MIN_OPACITY_LOGIT
    return finite & opaque & (params["quats"].norm(dim=-1) > 0)


def pack(
    params: Mapping[str, Tensor],
    sh_degree: int,
    vq_mask: Tensor,
    codebook: Tensor,
    indices: Tensor,
    metadata: dict[str, Any] | None = None,
) -> CompactGaussians:
    """The Gaussians exactly as the file will hold them: in Morton order, rounded to its fixed point, VQ rows from
    the codebook (see ``quantise``).

    ``codebook`` is ``[C, K - 1, 3]`` (or flat, ``[C, 3(K - 1)]``); ``indices`` holds the code of each ``vq_mask``
    row, in Gaussian order.
    """
    features_rest = params["features_rest"].detach().float().clone()
    codebook = codebook.detach().float().reshape(codebook.shape[0], *features_rest.shape[1:])
    features_rest[vq_mask] = codebook[indices]
    raw = CompactGaussians(
        means=params["means"].detach().float(),
        scales=params["scales"].detach().float(),
        quats=params["quats"].detach().float(),
        opacities=params["opacities"].detach().float().reshape(-1, 1),
        features_dc=params["features_dc"].detach().float(),
        features_rest=features_rest,
        sh_degree=sh_degree,
        vq_mask=vq_mask.clone(),
        codebook=codebook,
        indices=indices.long().clone(),
    )
    _, quantisation, sections = fixed_point(raw)
    packed = decode_sections(sections, quantisation, sh_degree, params["means"].device)
    packed.metadata = dict(metadata or {})
    return packed


def encode_gaussians(
    params: Mapping[str, Tensor],
    sh_degree: int,
    scores: Tensor | None,
    options: VQOptions,
    progress: bool = True,
) -> tuple[CompactGaussians, dict[str, Any]]:
    """Select (drop invisible), vector-quantise the least significant ``vq_share`` by ``scores``, round to the
    file's fixed point (``pack``).

    ``scores`` (``[N]``, higher is more significant, e.g. LightGaussian's global significance) is needed only when
    something is quantised. Returns the Gaussians and figures (counts, codebook size, k-means distortion).
    """
    if not 0.0 <= options.vq_share <= 1.0:
        raise ValueError(f"vq_share must be in [0, 1], got {options.vq_share}")
    n_input = params["means"].shape[0]
    rest_shape = params["features_rest"].shape[1:]
    if rest_shape != ((sh_degree + 1) ** 2 - 1, 3):
        raise ValueError(f"features_rest has shape {tuple(params['features_rest'].shape)}; sh_degree is {sh_degree}")
    device = params["means"].device
    keep = visible_mask(params) if options.drop_invisible else torch.ones(n_input, dtype=torch.bool, device=device)
    params = {name: value.detach()[keep] for name, value in params.items()}
    n = int(keep.sum())
    quantise = options.vq_share > 0 and rest_shape[0] > 0 and n > 0
    if quantise and needs_scores(options) and (scores is None or scores.shape != (n_input,)):
        got = None if scores is None else tuple(scores.shape)
        raise ValueError(f"scores must be a [{n_input}] tensor when 0 < vq_share < 1, got {got}")
    vq_mask = torch.zeros(n, dtype=torch.bool, device=device)
    if quantise and options.vq_share == 1:
        vq_mask[:] = True
    elif quantise:
        vq_mask = ~lowest_share_mask(scores.detach()[keep.to(scores.device)].to(vq_mask.device), options.vq_share)
    num_vq = int(vq_mask.sum())
    figures: dict[str, Any] = {
        "num_input": n_input,
        "num_dropped_invisible": n_input - n,
        "num_gaussians": n,
        "num_vq": num_vq,
        "vq_share": num_vq / n if n else 0.0,
    }
    codebook = params["features_rest"].new_zeros(0, *rest_shape)
    indices = torch.zeros(0, dtype=torch.long, device=vq_mask.device)
    if num_vq > 0:
        vectors = params["features_rest"][vq_mask].reshape(num_vq, -1).float()
        size = min(options.codebook_size, num_vq) if options.codebook_size > 0 else default_codebook_size(num_vq)
        trained = train_codebook(vectors, size, options.kmeans_iterations, options.seed, progress)
        codebook, indices = trained.codes.reshape(size, *rest_shape), trained.assignment
        figures["kmeans_iterations"] = trained.iterations
        figures["kmeans_distortion"] = trained.distortion[-1]
        figures["kmeans_distortion_history"] = trained.distortion
        error = (codebook[indices] - params["features_rest"][vq_mask].float()).pow(2).mean()
        figures["vq_rmse"] = float(error.sqrt())  # of the codes before the file's rounding, per SH coefficient
    gaussians = pack(params, sh_degree, vq_mask, codebook, indices)
    figures["codebook_size"] = gaussians.codebook_size
    return gaussians, figures
