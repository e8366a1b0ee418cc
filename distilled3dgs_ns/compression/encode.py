"""Gaussian parameters to ``CompactGaussians``: fp16 everywhere, K-means VQ of the least significant SH rests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from distilled3dgs_ns.compression.codebook import default_codebook_size, train_codebook
from distilled3dgs_ns.compression.compact_format import CompactGaussians, from_frame, position_frame, to_frame
from distilled3dgs_ns.pruning import lowest_share_mask

MIN_OPACITY_LOGIT = -5.5373
"""logit(1/255), rounded as ``ns-export gaussian-splat`` rounds it: below it a Gaussian never reaches the rasterisers'
alpha threshold, and ns-export leaves it out."""


@dataclass
class VQOptions:
    """Which SH rests are vector-quantised and how the codebook is trained."""

    vq_share: float = 0.6
    """Share of the Gaussians, least significant first, whose SH rest coefficients are replaced by a codebook entry.
    Measured on lego-100 (a 10.8k-Gaussian teacher, 33.04 dB): fp16 alone 1.09 MB (PLY 2.69 MB) at +0.00 dB; 0.3:
    0.86 MB, -0.02 dB; 0.6: 0.63 MB, -0.15 dB, and +0.04 dB after 300 fine-tuning steps; 1.0: 0.32 MB, -0.47 dB.
    0.6 halves the SH cost while fine-tuning can still fully recover the loss."""
    codebook_size: int = 0
    """Codes in the K-means codebook; 0: LightGaussian's 8192, but at most one code per 16 quantised vectors (see
    ``default_codebook_size``)."""
    kmeans_iterations: int = 20
    """Lloyd iterations at most (stops earlier once the assignment no longer changes)."""
    seed: int = 0
    """Seed of the k-means++ initialisation; the same seed gives the same file."""
    drop_invisible: bool = True
    """Drop Gaussians that cannot show (opacity < 1/255, non-finite or zero-norm quaternion), as
    ``ns-export gaussian-splat`` does, so the decoded PLY matches its export."""


def visible_mask(params: Mapping[str, Tensor]) -> Tensor:
    """``[N]`` bool: finite parameters, opacity >= 1/255 and a non-zero quaternion."""
    n = params["means"].shape[0]
    finite = torch.ones(n, dtype=torch.bool, device=params["means"].device)
    for value in params.values():
        finite &= torch.isfinite(value).flatten(1).all(dim=1) if value.ndim > 1 else torch.isfinite(value)
    opaque = params["opacities"].reshape(n) >= MIN_OPACITY_LOGIT
    return finite & opaque & (params["quats"].norm(dim=-1) > 0)


def _fp16(value: Tensor, name: str) -> Tensor:
    rounded = value.detach().float().half().float()
    if not torch.isfinite(rounded).all():
        raise ValueError(f"{name} has values that are not finite in float16 (|x| > 65504, NaN or inf)")
    return rounded


def pack(
    params: Mapping[str, Tensor],
    sh_degree: int,
    vq_mask: Tensor,
    codebook: Tensor,
    indices: Tensor,
    metadata: dict[str, Any] | None = None,
) -> CompactGaussians:
    """The Gaussians exactly as the file will hold them: fp16-rounded, unit quaternions, VQ rows from the codebook.

    ``codebook`` is ``[C, K - 1, 3]`` (or flat, ``[C, 3(K - 1)]``); ``indices`` holds the code of each ``vq_mask``
    row, in Gaussian order.
    """
    means = params["means"].detach().float()
    frame = position_frame(means)
    quats = params["quats"].detach().float()
    features_rest = _fp16(params["features_rest"], "features_rest")
    codebook = _fp16(codebook, "codebook").reshape(codebook.shape[0], *features_rest.shape[1:])
    features_rest[vq_mask] = codebook[indices]
    stored_means = to_frame(means, frame)
    if not torch.isfinite(stored_means).all():
        raise ValueError("means has non-finite values")
    return CompactGaussians(
        means=from_frame(stored_means, frame),
        scales=_fp16(params["scales"], "scales"),
        quats=_fp16(quats / quats.norm(dim=-1, keepdim=True), "quats"),
        opacities=_fp16(params["opacities"].reshape(-1, 1), "opacities"),
        features_dc=_fp16(params["features_dc"], "features_dc"),
        features_rest=features_rest,
        sh_degree=sh_degree,
        vq_mask=vq_mask.clone(),
        codebook=codebook,
        indices=indices.long().clone(),
        position_frame=frame,
        metadata=dict(metadata or {}),
    )


def encode_gaussians(
    params: Mapping[str, Tensor],
    sh_degree: int,
    scores: Tensor | None,
    options: VQOptions,
    progress: bool = True,
) -> tuple[CompactGaussians, dict[str, Any]]:
    """Select (drop invisible), vector-quantise the least significant ``vq_share`` by ``scores``, round to fp16.

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
    if quantise and (scores is None or scores.shape != (n_input,)):
        got = None if scores is None else tuple(scores.shape)
        raise ValueError(f"scores must be a [{n_input}] tensor when vq_share > 0, got {got}")
    vq_mask = torch.zeros(n, dtype=torch.bool, device=device)
    if quantise:
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
    gaussians = pack(params, sh_degree, vq_mask, codebook, indices)
    figures["codebook_size"] = gaussians.codebook_size
    if num_vq > 0:  # error of the stored (fp16) codes, per SH coefficient
        error = (gaussians.features_rest[vq_mask] - params["features_rest"][vq_mask].float()).pow(2).mean()
        figures["vq_rmse"] = float(error.sqrt())
    return gaussians, figures
