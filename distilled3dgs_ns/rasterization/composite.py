"""Front-to-back alpha compositing of binned Gaussians, with an analytic backward and two counting passes (the
pixels each Gaussian is composited at, and those where it is the top contributor).

Work is done per slab: ``[blocks, pixels, n]`` pixel-Gaussian pairs, for the next ``n`` Gaussians of each block's
depth-sorted list, so that beyond the intersection lists memory is O(slab), whatever the image or scene size (never
pixels x Gaussians). What keeps it fast in plain torch:

- In block-centred pixel coordinates ``log(alpha) = log(opacity) - sigma`` is a quadratic in the pixel position,
  i.e. a dot product of 6 pixel features with 6 per-Gaussian coefficients: one batched matmul evaluates a slab, and
  in the backward the transposed matmul reduces per-pixel gradients to 6 moments per Gaussian.
- Transmittance is a cumulative product along the slab; per-pixel state (transmittance, prefix of the backward sum)
  carries between slabs. The backward recomputes alphas rather than storing them.
- Slab-sized scratch buffers are reused, and matmuls keep the small channel count as rows (MKL is much faster so).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from .binning import TilePlan

SLAB_ELEMS = 1 << 18  # pixel-Gaussian pairs per slab: bounds memory, keeps buffers cache-sized
MIN_BATCH, MAX_BATCH = 16, 256  # Gaussians per block and slab; MKL's batched matmul is slow below 16
ALPHA_MAX = 0.999
T_STOP = 1e-4  # a pixel stops before the Gaussian that would bring its transmittance to <= T_STOP
LOG_FLOOR = -20.0  # log-alpha floor, far below log(1/255): exp is very slow where its result is denormal
LOG_ALPHA_MAX = math.log(ALPHA_MAX)


def _schedule(lens: list[int], pixels: int) -> Iterator[tuple[int, int, list[tuple[int, int, int]]]]:
    """Groups of blocks ``(first, end, slabs)``; a slab ``(end block, list position, batch)`` covers blocks
    ``first..end`` at list positions ``position..position+batch``, and a group's slabs cover its lists in order.

    ``lens`` is sorted descending, so the blocks whose list is longer than ``position`` are a prefix. Groups bound
    the per-pair tables built at a time; the batch grows as blocks run out, keeping slabs near ``SLAB_ELEMS`` and
    the Python loop short.
    """
    group = max(1, SLAB_ELEMS // (pixels * MIN_BATCH))
    for g0 in range(0, len(lens), group):
        g1 = min(len(lens), g0 + group)
        slabs, k0 = [], 0
        while k0 < lens[g0]:
            n = bisect.bisect_left(lens, -k0, lo=g0, hi=g1, key=lambda v: -v) - g0
            batch = min(max(SLAB_ELEMS // (n * pixels), MIN_BATCH), MAX_BATCH, lens[g0] - k0)
            slabs.append((g0 + n, k0, batch))
            k0 += batch
        yield g0, g1, slabs


class _Scratch:
    """Named, reused flat buffers: a fresh multi-MB tensor per slab costs page faults that rival the arithmetic."""

    def __init__(self, like: Tensor):
        self.like = like
        self.flat: dict[str, Tensor] = {}

    def __call__(self, name: str, *shape: int) -> Tensor:
        return self._get(name, shape, self.like.dtype)

    def bools(self, name: str, *shape: int) -> Tensor:
        return self._get(name, shape, torch.bool)

    def _get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        size = math.prod(shape)
        buf = self.flat.get(name)
        if buf is None or buf.numel() < size:
            buf = self.flat[name] = self.like.new_empty(size, dtype=dtype)
        return buf[:size].view(shape)


class _Pairs:
    """Tables of one group of blocks' (block, Gaussian) pairs, in block frames; built per group so that their
    memory is bounded. The extra last row is a zero-opacity pair that padded slab entries point at."""

    def __init__(self, comp: _Compositor, g0: int, g1: int):
        plan = comp.plan
        self.p0 = comp.starts[g0]
        self.ids = plan.gauss_ids[self.p0 : comp.starts[g1]]
        centres = torch.repeat_interleave(
            plan.block_centres[g0:g1], plan.block_len[g0:g1], dim=0, output_size=len(self.ids)
        )
        self.rel = comp.means2d.index_select(0, self.ids) - centres  # mean - block centre
        self.conic = comp.conics.index_select(0, self.ids)
        mx, my = self.rel.unbind(-1)
        a, b, c = self.conic.unbind(-1)
        self.amb, self.bmc = a * mx + b * my, b * mx + c * my  # conic @ mean
        # log alpha = log o - sigma = features . coef, sigma = 0.5 a dx^2 + b dx dy + 0.5 c dy^2, d = mean - pixel
        quad = 0.5 * (self.amb * mx + self.bmc * my)
        log_opacities = comp.log_opacities.index_select(0, self.ids)
        coef = torch.stack([-0.5 * a, -b, -0.5 * c, self.amb, self.bmc, log_opacities - quad], dim=-1)
        self.coef = F.pad(coef, (0, 0, 0, 1))
        self.coef[-1, 5] = LOG_FLOOR
        self.colors = F.pad(comp.colors.index_select(0, self.ids), (0, 0, 0, 1))

    def rows(self, plan: TilePlan, b0: int, b1: int, k0: int, n: int) -> Tensor:
        """``[b, n]`` table rows of list positions ``k0..k0+n`` of blocks ``b0..b1`` (padding past a list's end)."""
        pos = k0 + torch.arange(n, device=self.ids.device)
        rows = plan.block_start[b0:b1, None] - self.p0 + pos
        return torch.where(pos < plan.block_len[b0:b1, None], rows, len(self.ids))

    @staticmethod
    def gather(table: Tensor, rows: Tensor) -> Tensor:
        """``[b, n, K]`` rows of a pair table (index_select: much faster than advanced indexing)."""
        return table.index_select(0, rows.flatten()).view(*rows.shape, table.shape[1])

    def mean_conic_grads(self, moments: Tensor) -> Tensor:
        """Chain per-pair moments (sum over pixels of dL/dlog_alpha * features) to d (mean2d, conic, log o)."""
        g0, g1, g2, g3, g4, g5 = moments.unbind(-1)
        mx, my = self.rel.unbind(-1)
        a, b, c = self.conic.unbind(-1)
        return torch.stack(
            [
                a * g3 + b * g4 - self.amb * g5,
                b * g3 + c * g4 - self.bmc * g5,
                -0.5 * g0 + mx * g3 - 0.5 * mx * mx * g5,
                -g1 + my * g3 + mx * g4 - mx * my * g5,
                -0.5 * g2 + my * g4 - 0.5 * my * my * g5,
                g5,
            ],
            dim=-1,
        )


class _Compositor:
    """One composite call: flat per-Gaussian tables, pixel features, and the slab loops of forward and backward."""

    def __init__(self, plan: TilePlan, means2d: Tensor, conics: Tensor, colors: Tensor, opacities: Tensor):
        self.plan = plan
        dtype, device = means2d.dtype, means2d.device
        n_gauss = opacities.numel()
        self.means2d, self.conics = means2d.reshape(n_gauss, 2), conics.reshape(n_gauss, 3)
        self.log_opacities = opacities.reshape(n_gauss).clamp_min(torch.finfo(dtype).tiny).log()
        # A ones channel, whose composite is the accumulated alpha.
        self.colors = torch.cat([colors.reshape(n_gauss, colors.shape[-1]), opacities.new_ones(n_gauss, 1)], dim=1)
        self.starts = list(itertools.accumulate(plan.block_lens, initial=0))  # host copy of block_start
        # Pixel features (u^2, uv, v^2, u, v, 1), pixel centres relative to the block centre, row-major.
        r = torch.arange(plan.sub, device=device, dtype=dtype) + 0.5 - 0.5 * plan.sub
        v, u = (t.flatten() for t in torch.meshgrid(r, r, indexing="ij"))
        self.features = torch.stack([u * u, u * v, v * v, u, v, torch.ones_like(u)], dim=-1)
        self.features_t = self.features.T.contiguous()
        self.pixels = plan.sub * plan.sub
        one_255 = torch.tensor(1.0 / 255.0, dtype=dtype)
        self.skip_below = torch.nextafter(one_255, torch.zeros_like(one_255)).item()  # keeps alpha >= 1/255
        self.one = torch.ones((), dtype=dtype, device=device)
        self.may_clamp = bool(opacities.max() > ALPHA_MAX) if n_gauss else False
        self.scratch = _Scratch(self.means2d)

    def groups(self) -> Iterator[tuple[_Pairs, Iterator[tuple[int, int, Tensor]]]]:
        """Per group of blocks: its pair tables and its slabs ``(first block, end block, table rows [b, n])``."""
        for g0, g1, slabs in _schedule(self.plan.block_lens, self.pixels):
            pairs = _Pairs(self, g0, g1)
            yield pairs, ((g0, b1, pairs.rows(self.plan, g0, b1, k0, n)) for b1, k0, n in slabs)

    def alphas(self, coef: Tensor, clamp_mask: bool = False) -> tuple[Tensor, Tensor | None]:
        """Alphas ``[b, P, n]`` from a slab's ``coef [b, 6, n]``, clamped at ``ALPHA_MAX``, zero where gsplat
        skips (alpha < 1/255). With ``clamp_mask`` (backward) also where the clamp was active, if it can be."""
        b, _, n = coef.shape
        log_alpha = torch.bmm(self.features.expand(b, -1, -1), coef, out=self.scratch("alpha", b, self.pixels, n))
        clamped = None
        if clamp_mask and self.may_clamp:
            clamped = torch.ge(log_alpha, LOG_ALPHA_MAX, out=self.scratch.bools("clamped", b, self.pixels, n))
        alpha = log_alpha.clamp_(LOG_FLOOR, LOG_ALPHA_MAX).exp_()
        return F.threshold(alpha, self.skip_below, 0.0, inplace=True), clamped

    def transmittance(self, alpha: Tensor, trans: Tensor) -> tuple[Tensor, Tensor]:
        """Turn ``alpha`` into ``alpha / (1 - alpha)`` in place; return it and the transmittance after each
        Gaussian, zero from the early-stop Gaussian on, so ``weight = alpha * T_before = odds * T_after``.

        ``trans`` (``[b, P, 1]``, carried between slabs) is updated in place; zero marks a stopped pixel.
        """
        one_minus = torch.sub(self.one, alpha, out=self.scratch("one_minus", *alpha.shape))
        odds = alpha.div_(one_minus)
        one_minus[..., :1].mul_(trans)  # start the product from the carried transmittance
        t_after = torch.cumprod(one_minus, dim=-1, out=self.scratch("t_after", *alpha.shape))
        F.threshold(t_after, T_STOP, 0.0, inplace=True)
        trans.copy_(t_after[..., -1:])
        return odds, t_after

    def forward(self) -> Tensor:
        """Accumulated ``[blocks, D+1, P]`` colour and alpha, background excluded."""
        n_blocks = len(self.plan.block_lens)
        acc = self.colors.new_zeros(n_blocks, self.colors.shape[1], self.pixels)
        trans = self.colors.new_ones(n_blocks, self.pixels, 1)
        for pairs, slabs in self.groups():
            for b0, b1, rows in slabs:
                alpha, _ = self.alphas(pairs.gather(pairs.coef, rows).transpose(1, 2))
                odds, t_after = self.transmittance(alpha, trans[b0:b1])
                weights = t_after.mul_(odds)
                acc[b0:b1].baddbmm_(pairs.gather(pairs.colors, rows).transpose(1, 2), weights.transpose(1, 2))
        return acc

    def hits(self) -> Tensor:
        """Per flat Gaussian row, the number of image pixels it is composited at ``[M]`` (int64): alpha >= 1/255
        and the pixel not yet stopped, exactly the pairs that get a non-zero weight in ``forward``."""
        n_blocks = len(self.plan.block_lens)
        inside = self.inside_image()
        trans = self.means2d.new_ones(n_blocks, self.pixels, 1)
        counts = torch.zeros(len(self.means2d), dtype=torch.int64, device=self.means2d.device)
        for pairs, slabs in self.groups():
            per_pair = pairs.coef.new_zeros(len(pairs.coef))  # at most sub^2 per pair: exact in floating point
            for b0, b1, rows in slabs:
                alpha, _ = self.alphas(pairs.gather(pairs.coef, rows).transpose(1, 2))
                odds, t_after = self.transmittance(alpha, trans[b0:b1])
                composited = t_after.mul_(odds).sign_()  # the weight is >= 3.9e-7 wherever it is not zero
                per_pair.index_copy_(0, rows.flatten(), torch.bmm(inside[b0:b1], composited).flatten())
            counts.index_add_(0, pairs.ids, per_pair[:-1].round().long())
        return counts

    def top_contributions(self) -> tuple[Tensor, Tensor]:
        """Per flat Gaussian row, the image pixels where its blending weight ``alpha * T`` is the largest of the
        pixel's (ties: the front one) ``[M]`` (int64): Mini-Splatting's "area_max", by ``forward``'s weights; and,
        from the same weights, its blending weight summed over the image pixels ``[M]`` (the blending importance the
        student's prunes rank by, without the backward pass that otherwise gives it)."""
        n_blocks = len(self.plan.block_lens)
        inside = self.inside_image()
        trans = self.means2d.new_ones(n_blocks, self.pixels, 1)
        best = self.means2d.new_zeros(n_blocks, self.pixels)
        best_row = torch.zeros(n_blocks, self.pixels, dtype=torch.int64, device=self.means2d.device)
        weight_sums = self.means2d.new_zeros(len(self.means2d))
        for pairs, slabs in self.groups():
            row_ids = F.pad(pairs.ids, (0, 1))  # the padding row: its weight is 0, so it never wins
            per_pair = pairs.coef.new_zeros(len(pairs.coef))
            for b0, b1, rows in slabs:
                alpha, _ = self.alphas(pairs.gather(pairs.coef, rows).transpose(1, 2))
                odds, t_after = self.transmittance(alpha, trans[b0:b1])
                weights = t_after.mul_(odds)
                per_pair.index_copy_(0, rows.flatten(), torch.bmm(inside[b0:b1], weights).flatten())
                slab_best, position = weights.max(dim=-1)  # the first maximum: the front one
                better = slab_best > best[b0:b1]  # strict: an earlier slab keeps a tie
                best[b0:b1] = torch.where(better, slab_best, best[b0:b1])
                winner = row_ids[rows].gather(1, position)
                best_row[b0:b1] = torch.where(better, winner, best_row[b0:b1])
            weight_sums.index_add_(0, pairs.ids, per_pair[:-1])
        won = (best > 0) & (inside[:, 0] > 0)
        return torch.bincount(best_row[won], minlength=len(self.means2d)), weight_sums

    def inside_image(self) -> Tensor:
        """``[blocks, 1, P]``: 1 for the blocks' pixels inside the image, 0 for the padding of edge tiles."""
        centres = self.plan.block_centres
        x = centres[:, :1] + self.features[:, 3]
        y = centres[:, 1:] + self.features[:, 4]
        return ((x < self.plan.width) & (y < self.plan.height)).to(self.means2d.dtype)[:, None, :]

    def backward(self, v_out: Tensor, v_dot_out: Tensor, absgrad: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        """Gradients from ``v_out [blocks, D+1, P]`` (dL/d colour, alpha) and ``v_dot_out [blocks, P, 1]``
        (dL/d output . output, background included).

        For the k-th composited Gaussian of a pixel, with weight w_k = alpha_k T_k and colour c_k:
        alpha_k dL/dalpha_k = w_k v.c_k - (v.out - sum_{j<=k} w_j v.c_j) * alpha_k / (1 - alpha_k),
        which is dL/dlog_alpha where alpha is not clamped. Returns per Gaussian ``(d [mean2d, conic, log o] [M, 6],
        d colours [M, D+1], sum over pixels of |d mean2d| [M, 2] or None)``.
        """
        n_blocks = len(self.plan.block_lens)
        v_gauss = self.means2d.new_zeros(len(self.means2d), 6)
        v_colors = torch.zeros_like(self.colors)
        v_abs = self.means2d.new_zeros(len(self.means2d), 2) if absgrad else None
        state = (self.colors.new_ones(n_blocks, self.pixels, 1), self.colors.new_zeros(n_blocks, self.pixels, 1))
        for pairs, slabs in self.groups():
            # Per pair: sum over pixels of dL/dlog_alpha * features, dL/dcolour, |dL/dmean2d| (x, y).
            grads = (
                torch.zeros_like(pairs.coef),
                torch.zeros_like(pairs.colors),
                pairs.coef.new_zeros(2, len(pairs.coef)) if absgrad else None,
            )
            for b0, b1, rows in slabs:
                self._backward_slab(pairs, b0, b1, rows, v_out, v_dot_out, state, grads)
            v_gauss.index_add_(0, pairs.ids, pairs.mean_conic_grads(grads[0][:-1]))
            v_colors.index_add_(0, pairs.ids, grads[1][:-1])
            if v_abs is not None:
                v_abs.index_add_(0, pairs.ids, grads[2][:, :-1].T)
        return v_gauss, v_colors, v_abs

    def _backward_slab(
        self,
        pairs: _Pairs,
        b0: int,
        b1: int,
        rows: Tensor,
        v_out: Tensor,
        v_dot_out: Tensor,
        state: tuple[Tensor, Tensor],
        grads: tuple[Tensor, Tensor, Tensor | None],
    ) -> None:
        """One slab of the backward; ``state`` (transmittance, prefix of sum w v.c per pixel) carries over."""
        trans, prefix = state[0][b0:b1], state[1][b0:b1]
        scratch = self.scratch
        coef = pairs.gather(pairs.coef, rows).transpose(1, 2)
        alpha, clamped = self.alphas(coef, clamp_mask=True)
        shape = alpha.shape
        odds, t_after = self.transmittance(alpha, trans)
        # Gaussians after an early stop get no gradient; skip the mask while no pixel here has stopped.
        composited = None if bool(trans.min() > 0) else torch.sign(t_after, out=scratch("mask", *shape))
        weights = t_after.mul_(odds)
        v_blk = v_out[b0:b1]
        colors_t = pairs.gather(pairs.colors, rows).transpose(1, 2)
        v_log = torch.bmm(v_blk.transpose(1, 2), colors_t, out=scratch("v_log", *shape)).mul_(weights)
        done = torch.cumsum(v_log, dim=-1, out=scratch("one_minus", *shape))
        rest = v_dot_out[b0:b1] - prefix
        prefix += done[..., -1:]
        behind = torch.sub(rest, done, out=done)
        v_log.sub_(behind.mul_(odds))  # dL/d log alpha per pixel
        if composited is not None:
            v_log.mul_(composited)
        if clamped is not None:
            v_log.masked_fill_(clamped, 0.0)

        flat_rows = rows.flatten()
        moments = torch.bmm(self.features_t.expand(len(v_log), -1, -1), v_log)  # [b, 6, n]
        grads[0].index_copy_(0, flat_rows, moments.transpose(1, 2).reshape(-1, 6))
        grads[1].index_copy_(0, flat_rows, torch.bmm(v_blk, weights).transpose(1, 2).reshape(len(flat_rows), -1))
        if grads[2] is not None:
            # Per pixel, d log_alpha / d mean2d is (u, v, 1) . (a, b, -conic@mean) in x, (b, c, -.) in y.
            a, b, c = -2.0 * coef[:, 0], -coef[:, 1], -2.0 * coef[:, 2]
            uv1 = self.features[:, 3:].expand(len(v_log), -1, -1)
            per_pixel = scratch("mask", *shape)
            for axis, jac in enumerate((torch.stack([a, b, -coef[:, 3]], 1), torch.stack([b, c, -coef[:, 4]], 1))):
                torch.bmm(uv1, jac, out=per_pixel).mul_(v_log).abs_()
                grads[2][axis].index_copy_(0, flat_rows, per_pixel.sum(1).flatten())


def _image_layout(plan: TilePlan, k: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes relating ``[C, H', W', K]`` (padded to whole tiles) to ``[C, tiles, subs, P, K]`` block order."""
    per, sub = plan.tile_size // plan.sub, plan.sub
    return (plan.n_cameras, plan.tile_height, per, sub, plan.tile_width, per, sub, k), (0, 1, 4, 2, 5, 3, 6, 7)


def _blocks_to_image(plan: TilePlan, blocks: Tensor) -> Tensor:
    """``[blocks, P, K]`` -> ``[C, H, W, K]``; blocks without Gaussians are zero."""
    k = blocks.shape[-1]
    n_subs = (plan.tile_size // plan.sub) ** 2
    full = blocks.new_zeros(plan.n_cameras * plan.n_tiles * n_subs, plan.sub * plan.sub, k)
    full[plan.block_ids] = blocks
    shape, perm = _image_layout(plan, k)
    inverse = [perm.index(i) for i in range(len(perm))]
    blocked = full.reshape([shape[i] for i in perm]).permute(inverse)
    ts = plan.tile_size
    return blocked.reshape(plan.n_cameras, plan.tile_height * ts, plan.tile_width * ts, k)[
        :, : plan.height, : plan.width
    ]


def _image_to_blocks(plan: TilePlan, image: Tensor) -> Tensor:
    """``[C, H, W, K]`` -> ``[blocks, P, K]``, the inverse of ``_blocks_to_image`` on non-empty blocks."""
    ts, k = plan.tile_size, image.shape[-1]
    image = F.pad(image, (0, 0, 0, plan.tile_width * ts - plan.width, 0, plan.tile_height * ts - plan.height))
    shape, perm = _image_layout(plan, k)
    blocks = image.reshape(shape).permute(perm)
    return blocks.reshape(-1, plan.sub * plan.sub, k)[plan.block_ids]


@torch.no_grad()
def count_hits(plan: TilePlan, means2d: Tensor, conics: Tensor, opacities: Tensor) -> Tensor:
    """Per flat Gaussian row, the number of pixels where it takes part in compositing (forward rules, no colours)."""
    no_colors = means2d.new_zeros(opacities.numel(), 0)
    return _Compositor(plan, means2d, conics, no_colors, opacities).hits()


@torch.no_grad()
def count_top_contributions(plan: TilePlan, means2d: Tensor, conics: Tensor, opacities: Tensor) -> Tensor:
    """Per flat Gaussian row, the number of pixels where it has the largest blending weight (forward rules)."""
    return top_contributions_and_weights(plan, means2d, conics, opacities)[0]


@torch.no_grad()
def top_contributions_and_weights(
    plan: TilePlan, means2d: Tensor, conics: Tensor, opacities: Tensor
) -> tuple[Tensor, Tensor]:
    """Per flat Gaussian row, the top-contributor pixel count and the blending weight summed over pixels."""
    no_colors = means2d.new_zeros(opacities.numel(), 0)
    return _Compositor(plan, means2d, conics, no_colors, opacities).top_contributions()


class CompositeFunction(torch.autograd.Function):
    """gsplat's ``rasterize_to_pixels`` on any device: projected Gaussians in (any leading shape, flattened to the
    rows ``plan.gauss_ids`` index), ``[C, H, W, D]`` colours and ``[C, H, W, 1]`` alphas out. With ``absgrad`` the
    backward sets ``means2d.absgrad`` (sum over pixels of |dL/d mean2d|), as gsplat's CUDA backward does."""

    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, backgrounds, plan, absgrad):
        comp = _Compositor(plan, means2d, conics, colors, opacities)
        image = _blocks_to_image(plan, comp.forward().transpose(1, 2))
        render_colors, render_alphas = image[..., :-1], image[..., -1:]
        if backgrounds is not None:
            render_colors = render_colors + (1.0 - render_alphas) * backgrounds[:, None, None, :]
        ctx.save_for_backward(means2d, conics, colors, opacities, backgrounds, render_colors, render_alphas)
        ctx.plan, ctx.absgrad = plan, absgrad
        return render_colors, render_alphas

    @staticmethod
    def backward(ctx, v_colors, v_alphas):
        means2d, conics, colors, opacities, backgrounds, render_colors, render_alphas = ctx.saved_tensors
        plan = ctx.plan
        comp = _Compositor(plan, means2d, conics, colors, opacities)
        v_out = _image_to_blocks(plan, torch.cat([v_colors, v_alphas], dim=-1)).transpose(1, 2).contiguous()
        v_dot_out = (v_colors * render_colors).sum(-1, keepdim=True) + v_alphas * render_alphas
        v_table, v_cols, v_abs = comp.backward(v_out, _image_to_blocks(plan, v_dot_out), ctx.absgrad)
        flat_opacities = opacities.reshape(-1)
        v_opacities = torch.where(flat_opacities > 0, v_table[:, 5] / flat_opacities, torch.zeros_like(flat_opacities))
        if v_abs is not None:
            means2d.absgrad = v_abs.reshape(means2d.shape)
        v_backgrounds = None
        if backgrounds is not None and ctx.needs_input_grad[4]:
            v_backgrounds = (v_colors * (1.0 - render_alphas)).sum(dim=(1, 2))
        return (
            v_table[:, :2].reshape(means2d.shape),
            v_table[:, 2:5].reshape(conics.shape),
            v_cols[:, :-1].reshape(colors.shape),
            v_opacities.reshape(opacities.shape),
            v_backgrounds,
            None,
            None,
        )
