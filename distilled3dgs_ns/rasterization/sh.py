"""Real spherical harmonics up to degree 4, in the sign convention of gsplat / the Inria 3DGS code."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sh_bases(n_bases: int, dirs: Tensor) -> Tensor:
    """Evaluate the first ``n_bases`` (1, 4, 9, 16 or 25) real SH bases at unit directions ``[..., 3]``."""
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]
    if n_bases > 1:
        c1 = 0.4886025119029199
        out += [-c1 * y, c1 * z, -c1 * x]
    if n_bases > 4:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [
            1.0925484305920792 * xy,
            -1.0925484305920792 * yz,
            0.31539156525252005 * (2.0 * zz - xx - yy),
            -1.0925484305920792 * xz,
            0.5462742152960396 * (xx - yy),
        ]
    if n_bases > 9:
        out += [
            -0.5900435899266435 * y * (3.0 * xx - yy),
            2.890611442640554 * xy * z,
            -0.4570457994644658 * y * (4.0 * zz - xx - yy),
            0.3731763325901154 * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            -0.4570457994644658 * x * (4.0 * zz - xx - yy),
            1.445305721320277 * z * (xx - yy),
            -0.5900435899266435 * x * (xx - 3.0 * yy),
        ]
    if n_bases > 16:
        out += [
            2.5033429417967046 * xy * (xx - yy),
            -1.7701307697799304 * yz * (3.0 * xx - yy),
            0.9461746957575601 * xy * (7.0 * zz - 1.0),
            -0.6690465435572892 * yz * (7.0 * zz - 3.0),
            0.10578554691520431 * (zz * (35.0 * zz - 30.0) + 3.0),
            -0.6690465435572892 * xz * (7.0 * zz - 3.0),
            0.47308734787878004 * (xx - yy) * (7.0 * zz - 1.0),
            -1.7701307697799304 * xz * (xx - 3.0 * yy),
            0.6258357354491761 * (xx * (xx - 3.0 * yy) - yy * (3.0 * xx - yy)),
        ]
    return torch.stack(out[:n_bases], dim=-1)


def spherical_harmonics(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Colour ``[..., 3]`` of SH ``coeffs [..., K, 3]`` (bands <= degree) seen along ``dirs [..., 3]``, any length.

    ``coeffs`` broadcasts against ``dirs``: ``[N, K, 3]`` coefficients shared by ``[C, N, 3]`` directions, as a
    render of several cameras has them.
    """
    n_bases = (degree + 1) ** 2
    if not 0 <= degree <= 4 or coeffs.shape[-2] < n_bases:
        raise ValueError(f"sh_degree {degree} needs 0..4 and >= {n_bases} coefficients, got {coeffs.shape[-2]}")
    dirs = F.normalize(dirs, dim=-1)
    return _Contract.apply(sh_bases(n_bases, dirs), coeffs)


class _Contract(torch.autograd.Function):
    """``sum_k bases[..., k] * coeffs[..., k, :]`` over the first ``K`` coefficients, ``coeffs`` broadcast over the
    leading (camera) dimensions of ``bases [..., K]``.

    The coefficients are the largest tensor of a step ([N, 16, 3] at degree 3); autograd's product-and-sum backward
    fills a zero tensor of their size for the slice and copies once more to undo the broadcast. This writes their
    gradient once (a zero fill remains only while a degree schedule renders fewer bands than are stored).
    """

    @staticmethod
    def forward(ctx, bases: Tensor, coeffs: Tensor) -> Tensor:
        used = coeffs[..., : bases.shape[-1], :]
        ctx.save_for_backward(bases, used)
        ctx.coeffs_shape = coeffs.shape
        return (bases[..., None] * used).sum(dim=-2)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        bases, used = ctx.saved_tensors
        grad_bases = grad_coeffs = None
        if ctx.needs_input_grad[0]:
            grad_bases = (used * grad[..., None, :]).sum(dim=-1)
        if ctx.needs_input_grad[1]:
            grad_coeffs = bases[..., None] * grad[..., None, :]
            lead = grad_coeffs.dim() - len(ctx.coeffs_shape)  # camera dimensions the coefficients broadcast over
            if lead:
                grad_coeffs = grad_coeffs.flatten(0, lead - 1)
                grad_coeffs = grad_coeffs[0] if len(grad_coeffs) == 1 else grad_coeffs.sum(dim=0)
            if ctx.coeffs_shape[-2] > bases.shape[-1]:
                grad_coeffs = F.pad(grad_coeffs, (0, 0, 0, ctx.coeffs_shape[-2] - bases.shape[-1]))
        return grad_bases, grad_coeffs
