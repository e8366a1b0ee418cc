"""EWA projection of 3-D Gaussians to image-space conics, as gsplat 1.4.0's ``fully_fused_projection`` (pinhole).

Written with plain differentiable torch ops: the projection is O(C*N), so autograd is cheap here; only the
per-pixel compositing needs a hand-written backward.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class Projection(NamedTuple):
    """Per-camera, per-Gaussian screen-space footprint; entries with ``radii == 0`` are culled."""

    radii: Tensor  # [C, N] int32
    means2d: Tensor  # [C, N, 2]
    depths: Tensor  # [C, N]
    conics: Tensor  # [C, N, 3] upper triangle of the inverse 2-D covariance
    compensations: Tensor | None  # [C, N] antialiasing opacity factor


def quat_scale_to_covar(quats: Tensor, scales: Tensor) -> Tensor:
    """World covariance ``R S S^T R^T`` ``[N, 3, 3]`` from wxyz quaternions (normalised here) and scales.

    Entry by entry on ``[N]`` columns: a batched matmul of 3x3 matrices is several times slower on a CPU.
    """
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    rot = (
        (1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)),
        (2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)),
        (2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)),
    )
    squared = (scales * scales).unbind(-1)
    entry = {(i, j): sum(rot[i][k] * rot[j][k] * squared[k] for k in range(3)) for i in range(3) for j in range(i, 3)}
    return torch.stack([entry[min(i, j), max(i, j)] for i in range(3) for j in range(3)], dim=-1).reshape(-1, 3, 3)


def project_gaussians(
    means: Tensor,
    covars: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    eps2d: float,
    near_plane: float,
    far_plane: float,
    radius_clip: float,
    calc_compensations: bool,
) -> Projection:
    """Project ``means [N,3]`` / ``covars [N,3,3]`` into ``C`` pinhole cameras (world->camera ``viewmats``)."""
    rot, trans = viewmats[:, :3, :3], viewmats[:, :3, 3]
    means_c = torch.einsum("cij,nj->cni", rot, means) + trans[:, None, :]  # [C, N, 3]
    # R covar R^T for every camera as one matrix product: vec(R S R^T) = (R kron R) vec(S).
    kron = (rot[:, :, None, :, None] * rot[:, None, :, None, :]).reshape(-1, 9, 9)
    covars_c = (covars.reshape(1, -1, 9) @ kron.transpose(1, 2)).unbind(-1)  # 9 x [C, N], row-major
    tx, ty, tz = means_c.unbind(-1)
    in_depth = (tz >= near_plane) & (tz <= far_plane)
    # Culled Gaussians may sit at z ~ 0; a harmless stand-in depth keeps their (unused) gradients finite.
    tz = torch.where(in_depth, tz, torch.ones_like(tz))

    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    # gsplat clamps x/z, y/z in the Jacobian to the field of view plus 30%, so off-screen Gaussians do not explode.
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    jx = torch.minimum(torch.maximum(tx / tz, -lim_x_neg), lim_x_pos)
    jy = torch.minimum(torch.maximum(ty / tz, -lim_y_neg), lim_y_pos)
    # J covar_c J^T with the Jacobian's rows (j00, 0, j02) and (0, j11, j12), entry by entry.
    j00, j02, j11, j12 = fx / tz, -fx * jx / tz, fy / tz, -fy * jy / tz
    s00, s01, s02, _, s11, s12, _, _, s22 = covars_c
    a = j00 * (j00 * s00 + 2 * j02 * s02) + j02 * j02 * s22
    b = j00 * (j11 * s01 + j12 * s02) + j02 * (j11 * s12 + j12 * s22)
    c = j11 * (j11 * s11 + 2 * j12 * s12) + j12 * j12 * s22
    means2d = torch.stack([fx * tx / tz + cx, fy * ty / tz + cy], dim=-1)

    det_orig = a * c - b * b
    a, c = a + eps2d, c + eps2d
    det = a * c - b * b
    compensations = None
    if calc_compensations:
        # clamp_min keeps sqrt's gradient finite for degenerate (zero-area) Gaussians; alpha < 1/255 there anyway.
        compensations = torch.sqrt(torch.clamp_min(det_orig / det, 1e-12))
    det_safe = det.clamp_min(1e-10)
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)

    with torch.no_grad():
        mid = 0.5 * (a + c)
        radius = torch.ceil(3.0 * torch.sqrt(mid + torch.sqrt(torch.clamp_min(mid * mid - det, 0.01))))
        mx, my = means2d.unbind(-1)
        keep = (
            in_depth
            & (det > 0)
            & (radius > radius_clip)
            & (mx + radius > 0)
            & (mx - radius < width)
            & (my + radius > 0)
            & (my - radius < height)
        )
        radii = torch.where(keep, radius, torch.zeros_like(radius)).int()
    return Projection(radii, means2d, means_c[..., 2], conics, compensations)
