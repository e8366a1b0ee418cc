"""Pure-PyTorch ``rasterization``: gsplat 1.4.0's pinhole pipeline (project, SH, bin, composite) on any device."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .binning import TilePlan, isect_tiles, make_plan
from .composite import CompositeFunction, count_hits, count_top_contributions, top_contributions_and_weights
from .projection import Projection, project_gaussians, quat_scale_to_covar
from .sh import spherical_harmonics

RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")


def rasterization_torch(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    packed: bool = True,
    tile_size: int = 16,
    backgrounds: Tensor | None = None,
    render_mode: str = "RGB",
    absgrad: bool = False,
    rasterize_mode: str = "classic",
    covars: Tensor | None = None,
) -> tuple[Tensor, Tensor, dict]:
    """Same arguments, outputs and ``info`` keys as ``gsplat.rendering.rasterization`` (pinhole cameras)."""
    n_gauss, n_cams = means.shape[0], viewmats.shape[0]
    _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, sh_degree, covars)
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    proj, opacities = _project(
        means,
        quats,
        scales,
        opacities,
        viewmats,
        Ks,
        width,
        height,
        near_plane,
        far_plane,
        radius_clip,
        eps2d,
        rasterize_mode,
        covars,
    )

    if sh_degree is None:
        colors = colors.expand(n_cams, n_gauss, colors.shape[-1])
    else:
        # Camera centres -R^T t of the rigid world->camera transforms (gsplat inverts the 4x4; same for rigid ones,
        # and linalg.inv is unreliable on MPS).
        cam_centres = -(viewmats[:, None, :3, :3].transpose(-1, -2) @ viewmats[:, None, :3, 3:])[..., 0]
        colors = spherical_harmonics(sh_degree, means[None] - cam_centres, colors)
        colors = torch.clamp_min(colors + 0.5, 0.0)  # gsplat's offset, as Inria's CUDA backend
    if render_mode != "RGB":
        depth = proj.depths[..., None]
        colors = depth if render_mode in ("D", "ED") else torch.cat([colors, depth], dim=-1)
        if backgrounds is not None:
            backgrounds = (
                backgrounds.new_zeros(n_cams, 1)
                if render_mode in ("D", "ED")
                else torch.cat([backgrounds, backgrounds.new_zeros(n_cams, 1)], dim=-1)
            )

    radii, means2d, depths, conics = proj.radii, proj.means2d, proj.depths, proj.conics
    if packed:
        camera_ids, gaussian_ids = torch.nonzero(radii > 0, as_tuple=True)
        radii, means2d, depths, conics = (x[camera_ids, gaussian_ids] for x in (radii, means2d, depths, conics))
        opacities, colors = opacities[camera_ids, gaussian_ids], colors[camera_ids, gaussian_ids]
        flat_cams = camera_ids
    else:
        camera_ids = gaussian_ids = None
        flat_cams = torch.arange(n_cams, device=means.device).repeat_interleave(n_gauss)

    (tiles_per_gauss, isect_ids, flatten_ids, isect_offsets), plan = _bin(
        means2d, radii, depths, conics, opacities, flat_cams, n_cams, width, height, tile_size
    )
    render_colors, render_alphas = CompositeFunction.apply(
        means2d, conics, colors, opacities, backgrounds, plan, absgrad
    )
    if render_mode in ("ED", "RGB+ED"):
        expected = render_colors[..., -1:] / render_alphas.clamp_min(1e-10)
        render_colors = torch.cat([render_colors[..., :-1], expected], dim=-1)

    info = {
        "camera_ids": camera_ids,
        "gaussian_ids": gaussian_ids,
        "radii": radii,
        "means2d": means2d,
        "depths": depths,
        "conics": conics,
        "opacities": opacities,
        "tile_width": plan.tile_width,
        "tile_height": plan.tile_height,
        "tiles_per_gauss": tiles_per_gauss.reshape(radii.shape),
        "isect_ids": isect_ids,
        "flatten_ids": flatten_ids.int(),
        "isect_offsets": isect_offsets,
        "width": width,
        "height": height,
        "tile_size": tile_size,
        "n_cameras": n_cams,
    }
    return render_colors, render_alphas, info


@torch.no_grad()
def hit_counts(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    top_contributor: bool = False,
    **options: Any,
) -> Tensor:
    """Per camera, the number of pixels each Gaussian takes part in compositing at ``[C, N]`` (int64).

    LightGaussian's hit count: alpha >= 1/255 and the pixel not stopped yet, by the rules of ``rasterization_torch``
    (gsplat's), with the same arguments (``options``: near_plane, far_plane, radius_clip, eps2d, tile_size,
    rasterize_mode, covars). With ``top_contributor`` only the pixels where the Gaussian's blending weight
    ``alpha * T`` is the pixel's largest count (Mini-Splatting's ``area_max``; ties go to the front Gaussian), so the
    counts of a camera sum to its covered pixels. A forward pass without colours, on any device; memory as one render.
    """
    count = count_top_contributions if top_contributor else count_hits
    return _per_camera(count, means, quats, scales, opacities, viewmats, Ks, width, height, **options)[0]


@torch.no_grad()
def top_contributions(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    **options: Any,
) -> tuple[Tensor, Tensor]:
    """Per camera ``[C, N]``: ``hit_counts(..., top_contributor=True)`` and each Gaussian's blending weight
    ``alpha * T`` summed over the pixels, from one forward pass (the weight sum is what a backward pass of a
    one-channel render gives, at about a third of its cost: the student's prune ranks by both)."""
    counts, weights = _per_camera(
        top_contributions_and_weights, means, quats, scales, opacities, viewmats, Ks, width, height, **options
    )
    return counts, weights


def _per_camera(
    count: Callable[..., Tensor | tuple[Tensor, ...]],
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    tile_size: int = 16,
    rasterize_mode: str = "classic",
    covars: Tensor | None = None,
) -> tuple[Tensor, ...]:
    """Project and bin the Gaussians as ``rasterization_torch`` does, then ``count(plan, means2d, conics,
    opacities)``: per flat row results, returned as ``[C, N]`` each."""
    n_gauss, n_cams = means.shape[0], viewmats.shape[0]
    _check_inputs(means, quats, scales, opacities, None, viewmats, Ks, None, covars)
    projection = (near_plane, far_plane, radius_clip, eps2d, rasterize_mode, covars)
    proj, opacities = _project(means, quats, scales, opacities, viewmats, Ks, width, height, *projection)
    flat_cams = torch.arange(n_cams, device=means.device).repeat_interleave(n_gauss)
    _, plan = _bin(
        proj.means2d, proj.radii, proj.depths, proj.conics, opacities, flat_cams, n_cams, width, height, tile_size
    )
    results = count(plan, proj.means2d, proj.conics, opacities)
    results = results if isinstance(results, tuple) else (results,)
    return tuple(result.reshape(n_cams, n_gauss) for result in results)


def _project(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float,
    far_plane: float,
    radius_clip: float,
    eps2d: float,
    rasterize_mode: str,
    covars: Tensor | None,
) -> tuple[Projection, Tensor]:
    """Project into every camera; the ``[C, N]`` opacities carry the antialiasing compensation when there is one."""
    if rasterize_mode not in ("classic", "antialiased"):
        raise ValueError(f"rasterize_mode must be 'classic' or 'antialiased', got {rasterize_mode!r}")
    if covars is None:
        covars = quat_scale_to_covar(quats, scales)
    proj = project_gaussians(
        means,
        covars,
        viewmats,
        Ks,
        width,
        height,
        eps2d,
        near_plane,
        far_plane,
        radius_clip,
        calc_compensations=rasterize_mode == "antialiased",
    )
    opacities = opacities.expand(viewmats.shape[0], means.shape[0])
    if proj.compensations is not None:
        opacities = opacities * proj.compensations
    return proj, opacities


def _bin(
    means2d: Tensor,
    radii: Tensor,
    depths: Tensor,
    conics: Tensor,
    opacities: Tensor,
    flat_cams: Tensor,
    n_cams: int,
    width: int,
    height: int,
    tile_size: int,
) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor], TilePlan]:
    """gsplat's tile intersections ``(tiles_per_gauss, isect_ids, flatten_ids, isect_offsets)`` and the
    compositor's block plan, from flat (packed or ``[C, N]``) projected Gaussians."""
    tile_width, tile_height = math.ceil(width / tile_size), math.ceil(height / tile_size)
    flat_means2d, flat_conics = means2d.detach().reshape(-1, 2), conics.detach().reshape(-1, 3)
    isect = isect_tiles(
        flat_means2d,
        radii.reshape(-1),
        depths.detach().reshape(-1),
        flat_cams,
        n_cams,
        tile_size,
        tile_width,
        tile_height,
    )
    plan = make_plan(
        isect[1],
        isect[2],
        flat_means2d,
        flat_conics,
        opacities.detach().reshape(-1),
        n_cams,
        width,
        height,
        tile_size,
    )
    return isect, plan


def _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, sh_degree, covars) -> None:
    """gsplat's shape contract, checked up front: a wrong shape would otherwise broadcast silently."""
    n, c = means.shape[0], viewmats.shape[0]
    expected = {
        "means": (means, (n, 3)),
        "opacities": (opacities, (n,)),
        "viewmats": (viewmats, (c, 4, 4)),
        "Ks": (Ks, (c, 3, 3)),
    }
    if covars is None:
        expected.update(quats=(quats, (n, 4)), scales=(scales, (n, 3)))
    else:
        expected["covars"] = (covars, (n, 3, 3))
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)}, got {list(tensor.shape)}")
    if colors is None:
        return
    lead = tuple(colors.shape[: colors.dim() - (1 if sh_degree is None else 2)])
    if lead not in ((n,), (c, n)) or (sh_degree is not None and colors.shape[-1] != 3):
        layout = "[N, D] or [C, N, D]" if sh_degree is None else "[N, K, 3] or [C, N, K, 3]"
        raise ValueError(f"colors must be {layout} with N={n}, C={c}; got {list(colors.shape)}")
