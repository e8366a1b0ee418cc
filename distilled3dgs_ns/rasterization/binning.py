"""Tile binning: which Gaussians touch which tile, front to back, in gsplat 1.4.0's ``isect_tiles`` encoding, then
split into sub-blocks for the compositor."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

SUB_BLOCKS = (4, 8)  # compositor block edges (pixels): small ones for small Gaussians, when they divide the tile
SMALL_FOOTPRINT = 3.0
"""Median half-extent (pixels) of the intersecting Gaussians' alpha >= 1/255 boxes below which 4-pixel blocks are
used: a block much wider than its Gaussians evaluates mostly pixels they do not reach, while small blocks cost more
per pair where Gaussians are large (measured both ways: docs/performance.md)."""


@dataclass(frozen=True)
class TilePlan:
    """Depth-sorted Gaussian lists of every non-empty compositor block, longest list first.

    A block is a ``sub x sub`` square of a tile; its list is the tile's list minus Gaussians that cannot reach
    alpha >= 1/255 at any of its pixels, which gsplat would skip there anyway, so results are unchanged while far
    fewer pixel-Gaussian pairs are evaluated. Longest-first makes the blocks still active at list position ``k`` a
    prefix, so the compositing loop slices instead of gathering, and consecutive blocks own consecutive pairs.
    ``block_lens`` is a host copy so the slab schedule needs no device syncs.
    """

    n_cameras: int
    width: int
    height: int
    tile_size: int
    tile_width: int
    tile_height: int
    sub: int
    gauss_ids: Tensor  # [pairs] Gaussian (flat [C*N] or packed) index: the blocks' lists, one after the other
    block_ids: Tensor  # [B] (camera * n_tiles + tile) * subs_per_tile + sub-block (row-major in the tile)
    block_centres: Tensor  # [B, 2] pixel coordinates of the block centre
    block_start: Tensor  # [B] offset of the block's list in gauss_ids
    block_len: Tensor  # [B]
    block_lens: list[int]

    @property
    def n_tiles(self) -> int:
        return self.tile_width * self.tile_height


@torch.no_grad()
def isect_tiles(
    means2d: Tensor,
    radii: Tensor,
    depths: Tensor,
    camera_ids: Tensor,
    n_cameras: int,
    tile_size: int,
    tile_width: int,
    tile_height: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Intersect flat Gaussians (``[M]`` rows) with the tiles their ``radii`` box covers.

    Returns gsplat's ``tiles_per_gauss [M]`` (int32), ``isect_ids [I]`` (camera | tile | float32 depth bits,
    sorted), ``flatten_ids [I]`` (int64) and ``isect_offsets [C, tile_height, tile_width]`` (int32).
    """
    device = means2d.device
    tile_xy = means2d / tile_size
    tile_r = (radii / tile_size)[:, None].to(tile_xy.dtype)
    limits = torch.tensor([tile_width, tile_height], device=device)
    lo = torch.minimum(torch.floor(tile_xy - tile_r).clamp_min(0).long(), limits)
    hi = torch.minimum(torch.ceil(tile_xy + tile_r).clamp_min(0).long(), limits)
    span = hi - lo
    tiles_per_gauss = span[:, 0] * span[:, 1] * (radii > 0)

    gauss = torch.repeat_interleave(torch.arange(len(radii), device=device), tiles_per_gauss)
    first = torch.cumsum(tiles_per_gauss, 0) - tiles_per_gauss
    local = torch.arange(len(gauss), device=device) - first[gauss]
    span_x = span[gauss, 0]
    tile = (lo[gauss, 1] + local // span_x) * tile_width + lo[gauss, 0] + local % span_x
    depth_bits = depths.float().view(torch.int32).long() & 0xFFFFFFFF
    tile_bits = (tile_width * tile_height).bit_length()
    isect_ids = (camera_ids[gauss] << (32 + tile_bits)) | (tile << 32) | depth_bits[gauss]
    isect_ids, order = torch.sort(isect_ids, stable=True)
    flatten_ids = gauss[order]

    n_tiles = tile_width * tile_height
    bounds = torch.arange(n_cameras * n_tiles, device=device)
    offsets = torch.searchsorted(_global_tiles(isect_ids, n_tiles), bounds)
    return tiles_per_gauss.int(), isect_ids, flatten_ids, offsets.int().reshape(n_cameras, tile_height, tile_width)


def _global_tiles(isect_ids: Tensor, n_tiles: int) -> Tensor:
    """``camera * n_tiles + tile`` of gsplat-encoded intersection ids."""
    tile_bits = n_tiles.bit_length()
    return (isect_ids >> (32 + tile_bits)) * n_tiles + ((isect_ids >> 32) & ((1 << tile_bits) - 1))


@torch.no_grad()
def make_plan(
    isect_ids: Tensor,
    flatten_ids: Tensor,
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    n_cameras: int,
    width: int,
    height: int,
    tile_size: int,
) -> TilePlan:
    """Split each tile's depth-sorted list into its sub-blocks' lists (flat ``[M]`` Gaussian rows in)."""
    tile_width, tile_height = math.ceil(width / tile_size), math.ceil(height / tile_size)
    n_tiles = tile_width * tile_height
    device = means2d.device

    # Per Gaussian, the sub-blocks (global columns / rows) that can see alpha >= 1/255: the bounding box of the
    # ellipse sigma <= log(255 opacity), widened by the float error of evaluating sigma in block-centred
    # coordinates (a few ulps of its largest term, conic * distance^2).
    a, b, c = conics.unbind(-1)
    det = a * c - b * b
    spread = torch.stack([c, a], dim=-1) / det[:, None]  # diagonal of the covariance
    level = torch.log(255.0 * opacities)
    extent = torch.sqrt(2.0 * level.clamp_min(0)[:, None] * spread).amax(-1)  # half the box's longer side
    sub = _block_edge(tile_size, extent[flatten_ids])
    per_side = tile_size // sub
    reach = extent + 2 * sub
    level = level + 1e-3 + 64 * torch.finfo(level.dtype).eps * torch.maximum(a.abs(), c.abs()) * reach * reach
    box = torch.sqrt(2.0 * level.clamp_min(0)[:, None] * spread)
    box = torch.where((det > 0)[:, None], box, torch.full_like(box, math.inf))
    visible = (level > 0)[:, None]
    n_subs_xy = means2d.new_tensor([math.ceil(width / sub), math.ceil(height / sub)])  # clip to the image too
    first = torch.where(visible, torch.ceil((means2d - box - sub + 0.5) / sub), n_subs_xy)
    last = torch.where(visible, torch.floor((means2d + box - 0.5) / sub), -1.0).clamp(-1).minimum(n_subs_xy - 1)
    first, last = first.clamp(0).minimum(n_subs_xy).long(), last.long()

    # Per intersection, the same in the tile's own sub-block grid.
    tiles = _global_tiles(isect_ids, n_tiles)
    tile_subs = torch.stack([tiles % n_tiles % tile_width, tiles % n_tiles // tile_width], dim=-1) * per_side
    q = torch.arange(per_side, device=device)
    lo, hi = first[flatten_ids] - tile_subs, last[flatten_ids] - tile_subs
    hit_x = (q >= lo[:, 0:1]) & (q <= hi[:, 0:1])
    hit_y = (q >= lo[:, 1:2]) & (q <= hi[:, 1:2])
    hits = (hit_y[:, :, None] & hit_x[:, None, :]).reshape(len(tiles), per_side * per_side)

    # Sub-block-major order keeps each block's list contiguous and in the tile's depth order, without a sort.
    sub_idx, isect_idx = torch.nonzero(hits.T, as_tuple=True)
    n_subs, n_keys = per_side * per_side, n_cameras * n_tiles
    keys = sub_idx * n_keys + tiles[isect_idx]
    starts = torch.searchsorted(keys, torch.arange(n_subs * n_keys + 1, device=device))
    lens = starts[1:] - starts[:-1]
    lens, order = torch.sort(lens, descending=True, stable=True)
    n_blocks = int((lens > 0).sum())
    order, lens = order[:n_blocks], lens[:n_blocks]
    # Lay the lists out longest block first.
    block_start = torch.cumsum(lens, 0) - lens
    source = torch.repeat_interleave(starts[order] - block_start, lens) + torch.arange(len(keys), device=device)
    tile, sub_of_block = order % n_keys % n_tiles, order // n_keys
    corner_x = tile % tile_width * tile_size + sub_of_block % per_side * sub
    corner_y = tile // tile_width * tile_size + sub_of_block // per_side * sub
    return TilePlan(
        n_cameras=n_cameras,
        width=width,
        height=height,
        tile_size=tile_size,
        tile_width=tile_width,
        tile_height=tile_height,
        sub=sub,
        gauss_ids=flatten_ids[isect_idx[source]],
        block_ids=order % n_keys * n_subs + sub_of_block,
        block_centres=torch.stack([corner_x, corner_y], dim=-1).to(means2d.dtype) + 0.5 * sub,
        block_start=block_start,
        block_len=lens,
        block_lens=lens.tolist(),
    )


def _block_edge(tile_size: int, half_extents: Tensor) -> int:
    """The compositor's block edge for Gaussians of these box ``half_extents`` (one per intersection)."""
    fits = [edge for edge in SUB_BLOCKS if tile_size % edge == 0]
    if not fits:
        return tile_size
    if len(half_extents) and float(half_extents.nan_to_num(math.inf).median()) < SMALL_FOOTPRINT:
        return fits[0]
    return fits[-1]
