"""A slow, literal per-pixel rasteriser with gsplat 1.4.0's rules, and a hit counter by the same rules, for tests only.

Every rule is applied one Gaussian and one pixel at a time, in plain differentiable torch ops (use float64), so
autograd of this code is the reference gradient. It shares no code with ``distilled3dgs_ns.rasterization``; SH
colours come from gsplat's own pure-torch evaluation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _rotation(quat: Tensor) -> Tensor:
    w, x, y, z = quat / quat.norm()
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)]),
            torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)]),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]),
        ]
    )


def _project_one(mean, quat, scale, viewmat, K, width, height, eps2d):
    """Camera depth, 2-D mean, 2-D covariance before and after the eps2d blur, of one Gaussian."""
    rot = _rotation(quat)
    cov = rot @ torch.diag(scale * scale) @ rot.T
    p = viewmat[:3, :3] @ mean + viewmat[:3, 3]
    cov_c = viewmat[:3, :3] @ cov @ viewmat[:3, :3].T
    x, y, z = p
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    # gsplat clamps x/z and y/z in the Jacobian to the field of view plus 30% of its half-width.
    tx = z * torch.clamp(x / z, -(cx / fx + 0.15 * width / fx), (width - cx) / fx + 0.15 * width / fx)
    ty = z * torch.clamp(y / z, -(cy / fy + 0.15 * height / fy), (height - cy) / fy + 0.15 * height / fy)
    zero = torch.zeros_like(z)
    jac = torch.stack(
        [torch.stack([fx / z, zero, -fx * tx / (z * z)]), torch.stack([zero, fy / z, -fy * ty / (z * z)])]
    )
    cov2d = jac @ cov_c @ jac.T
    mean2d = torch.stack([fx * x / z + cx, fy * y / z + cy])
    return z, mean2d, cov2d, cov2d + eps2d * torch.eye(2, dtype=cov2d.dtype)


def _visible_gaussians(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmat: Tensor,
    K: Tensor,
    width: int,
    height: int,
    near_plane: float,
    far_plane: float,
    eps2d: float,
    rasterize_mode: str,
) -> tuple[list[tuple], list[int]]:
    """``(z, index, mean2d, conic, opacity, radius)`` of the Gaussians a camera sees, front to back (ties by index),
    and every Gaussian's radius (0: culled)."""
    gaussians, radii = [], []
    for g in range(len(means)):
        z, mean2d, cov_orig, cov = _project_one(means[g], quats[g], scales[g], viewmat, K, width, height, eps2d)
        det = cov[0, 0] * cov[1, 1] - cov[0, 1] * cov[1, 0]
        mid = 0.5 * (cov[0, 0] + cov[1, 1]).item()
        radius = math.ceil(3.0 * math.sqrt(mid + math.sqrt(max(0.01, mid * mid - det.item()))))
        mx, my = mean2d.tolist()
        visible = (
            near_plane <= z.item() <= far_plane
            and det.item() > 0
            and mx + radius > 0
            and mx - radius < width
            and my + radius > 0
            and my - radius < height
        )
        radii.append(radius if visible else 0)
        if not visible:
            continue
        opacity = opacities[g]
        if rasterize_mode == "antialiased":
            det_orig = cov_orig[0, 0] * cov_orig[1, 1] - cov_orig[0, 1] * cov_orig[1, 0]
            opacity = opacity * torch.sqrt(det_orig / det)
        gaussians.append((z, g, mean2d, torch.linalg.inv(cov), opacity, radius))
    gaussians.sort(key=lambda item: (item[0].item(), item[1]))
    return gaussians, radii


def _tile_ranges(mean2d: Tensor, radius: int, tile_size: int) -> tuple[set[int], set[int]]:
    """The tile columns and rows a Gaussian's radius box touches (gsplat's tile lists)."""
    mx, my = mean2d.tolist()
    tiles_x = range(max(0, math.floor((mx - radius) / tile_size)), math.ceil((mx + radius) / tile_size))
    tiles_y = range(max(0, math.floor((my - radius) / tile_size)), math.ceil((my + radius) / tile_size))
    return set(tiles_x), set(tiles_y)


def reference_rasterization(
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
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    tile_size: int = 16,
    backgrounds: Tensor | None = None,
    render_mode: str = "RGB",
    rasterize_mode: str = "classic",
) -> tuple[Tensor, Tensor, Tensor]:
    """``(render_colors [C,H,W,D], render_alphas [C,H,W,1], radii [C,N])`` by gsplat's rules, pixel by pixel."""
    images, alphas, all_radii = [], [], []
    for cam in range(len(viewmats)):
        viewmat, K = viewmats[cam], Ks[cam]
        if sh_degree is None:
            cam_colors = colors if colors.dim() == 2 else colors[cam]
        else:
            from gsplat.cuda._torch_impl import _spherical_harmonics

            centre = torch.linalg.inv(viewmat)[:3, 3]
            cam_colors = _spherical_harmonics(sh_degree, means - centre, colors)
            cam_colors = torch.clamp_min(cam_colors + 0.5, 0.0)
        bg = backgrounds[cam] if backgrounds is not None else None
        visible, radii = _visible_gaussians(
            means, quats, scales, opacities, viewmat, K, width, height, near_plane, far_plane, eps2d, rasterize_mode
        )
        gaussians = []
        for z, g, mean2d, conic, opacity, radius in visible:
            feature = cam_colors[g]
            if render_mode in ("D", "ED"):
                feature = z[None]
            elif render_mode in ("RGB+D", "RGB+ED"):
                feature = torch.cat([feature, z[None]])
            gaussians.append((z, g, mean2d, conic, opacity, feature, *_tile_ranges(mean2d, radius, tile_size)))
        all_radii.append(radii)

        n_channels = 1 if render_mode in ("D", "ED") else cam_colors.shape[-1] + (render_mode != "RGB")
        if bg is not None and render_mode != "RGB":
            bg = (
                torch.zeros(n_channels, dtype=means.dtype)
                if render_mode in ("D", "ED")
                else torch.cat([bg, bg[:1] * 0])
            )
        # Per tile: its Gaussians front to back, stacked so a pixel evaluates them in one go.
        per_tile = {}
        for ty in range(math.ceil(height / tile_size)):
            for tx in range(math.ceil(width / tile_size)):
                here = [item for item in gaussians if tx in item[6] and ty in item[7]]
                if here:
                    per_tile[ty, tx] = [torch.stack([item[k] for item in here]) for k in (2, 3, 4, 5)]
        rows, alpha_rows = [], []
        for i in range(height):
            row, alpha_row = [], []
            for j in range(width):
                trans = torch.ones((), dtype=means.dtype)
                pixel = torch.zeros(n_channels, dtype=means.dtype)
                if (i // tile_size, j // tile_size) in per_tile:
                    mean2d, conic, opacity, feature = per_tile[i // tile_size, j // tile_size]
                    dx, dy = mean2d[:, 0] - (j + 0.5), mean2d[:, 1] - (i + 0.5)
                    sigma = 0.5 * (conic[:, 0, 0] * dx * dx + conic[:, 1, 1] * dy * dy) + conic[:, 0, 1] * dx * dy
                    alpha = torch.clamp_max(opacity * torch.exp(-sigma), 0.999)
                    for k, (sigma_k, alpha_k) in enumerate(zip(sigma.tolist(), alpha.tolist(), strict=True)):
                        if sigma_k < 0 or alpha_k < 1.0 / 255.0:
                            continue
                        if trans.item() * (1 - alpha_k) <= 1e-4:
                            break
                        pixel = pixel + feature[k] * alpha[k] * trans
                        trans = trans * (1 - alpha[k])
                if bg is not None:
                    pixel = pixel + trans * bg
                row.append(pixel)
                alpha_row.append(1 - trans)
            rows.append(torch.stack(row))
            alpha_rows.append(torch.stack(alpha_row))
        image, alpha = torch.stack(rows), torch.stack(alpha_rows)[..., None]
        if render_mode in ("ED", "RGB+ED"):
            image = torch.cat([image[..., :-1], image[..., -1:] / alpha.clamp_min(1e-10)], dim=-1)
        images.append(image)
        alphas.append(alpha)
    return torch.stack(images), torch.stack(alphas), torch.tensor(all_radii, dtype=torch.int32)


def reference_hit_counts(
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
    eps2d: float = 0.3,
    tile_size: int = 16,
    rasterize_mode: str = "classic",
    top_contributor: bool = False,
    weights: bool = False,
) -> Tensor:
    """``[C, N]``: per camera, the pixels where each Gaussian is composited by gsplat's rules, counted one by one;
    with ``top_contributor``, only the pixels where its weight ``alpha * T`` is the largest (the front one on ties);
    with ``weights``, the sum of its weights ``alpha * T`` over the pixels (float64) instead of a count."""
    counts = torch.zeros(len(viewmats), len(means), dtype=torch.float64 if weights else torch.int64)
    for cam in range(len(viewmats)):
        visible, _ = _visible_gaussians(
            means,
            quats,
            scales,
            opacities,
            viewmats[cam],
            Ks[cam],
            width,
            height,
            near_plane,
            far_plane,
            eps2d,
            rasterize_mode,
        )
        # Plain floats, front to back: (index, mean x, mean y, conic a, b, c, opacity, tile columns, tile rows).
        gaussians = [
            (
                g,
                *mean2d.tolist(),
                conic[0, 0].item(),
                conic[0, 1].item(),
                conic[1, 1].item(),
                opacity.item(),
                *_tile_ranges(mean2d, radius, tile_size),
            )
            for _, g, mean2d, conic, opacity, radius in visible
        ]
        for i in range(height):
            for j in range(width):
                trans, best, best_g = 1.0, 0.0, None
                for g, mx, my, a, b, c, opacity, tiles_x, tiles_y in gaussians:
                    if j // tile_size not in tiles_x or i // tile_size not in tiles_y:
                        continue
                    dx, dy = mx - (j + 0.5), my - (i + 0.5)
                    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                    alpha = min(opacity * math.exp(-sigma), 0.999)
                    if sigma < 0 or alpha < 1.0 / 255.0:
                        continue
                    if trans * (1 - alpha) <= 1e-4:
                        break
                    if weights:
                        counts[cam, g] += alpha * trans
                    elif not top_contributor:
                        counts[cam, g] += 1
                    elif alpha * trans > best:
                        best, best_g = alpha * trans, g
                    trans *= 1 - alpha
                if best_g is not None:
                    counts[cam, best_g] += 1
    return counts
