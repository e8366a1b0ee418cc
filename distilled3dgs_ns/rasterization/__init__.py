"""``rasterization()``: gsplat 1.4.0's CUDA rasteriser on CUDA tensors, a pure-PyTorch twin everywhere else (and on
CUDA where gsplat's kernels cannot be built).

gsplat's own entry point dies on CPU (its kernels are CUDA-only), so callers use this function and get the same
outputs and ``info`` (enough for ``gsplat.strategy.DefaultStrategy``, absgrad included) on CPU or MPS.
``hit_counts()`` counts, per Gaussian, the pixels it is composited at, or those where it is the top contributor
(gsplat 1.4 has neither output), on any device; ``top_contributions()`` gives the latter with each Gaussian's summed
blending weight, in one pass.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from .backend import GsplatUnavailable, choose_backend, gsplat_problem
from .torch_backend import hit_counts, rasterization_torch, top_contributions

__all__ = [
    "GsplatUnavailable",
    "choose_backend",
    "gsplat_problem",
    "hit_counts",
    "rasterization",
    "rasterization_torch",
    "top_contributions",
]


def rasterization(
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
    render_mode: Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"] = "RGB",
    sparse_grad: bool = False,
    absgrad: bool = False,
    rasterize_mode: Literal["classic", "antialiased"] = "classic",
    backend: Literal["auto", "gsplat", "torch"] = "auto",
    **kwargs,
) -> tuple[Tensor, Tensor, dict]:
    """Render ``C`` cameras; arguments and return value as ``gsplat.rendering.rasterization``.

    ``backend="auto"`` uses gsplat for CUDA tensors (the torch implementation, with one warning, when gsplat's kernels
    cannot be built: see ``backend``) and the torch implementation otherwise; ``"torch"`` forces the latter (e.g. to
    compare on a GPU); ``"gsplat"`` insists on gsplat. Extra gsplat keywords (``channel_chunk``, ``covars``, ...) go
    to gsplat; the torch path accepts ``covars``, ignores ``channel_chunk`` and ``sparse_grad`` (its gradients are
    dense) and supports only pinhole, non-distributed rendering.
    """
    if backend not in ("auto", "gsplat", "torch"):
        raise ValueError(f"backend must be 'auto', 'gsplat' or 'torch', got {backend!r}")
    args = (means, quats, scales, opacities, colors, viewmats, Ks, width, height)
    options = dict(
        near_plane=near_plane,
        far_plane=far_plane,
        radius_clip=radius_clip,
        eps2d=eps2d,
        sh_degree=sh_degree,
        packed=packed,
        tile_size=tile_size,
        backgrounds=backgrounds,
        render_mode=render_mode,
        absgrad=absgrad,
        rasterize_mode=rasterize_mode,
    )
    if choose_backend(backend, means.device) == "gsplat":
        from gsplat.rendering import rasterization as gsplat_rasterization

        return gsplat_rasterization(*args, sparse_grad=sparse_grad, **options, **kwargs)

    kwargs.pop("channel_chunk", None)
    covars = kwargs.pop("covars", None)
    if kwargs.pop("camera_model", "pinhole") != "pinhole" or kwargs.pop("distributed", False):
        raise NotImplementedError("the torch rasteriser supports pinhole, non-distributed rendering only")
    if kwargs:
        raise TypeError(f"rasterization() got unexpected keyword arguments {sorted(kwargs)}")
    return rasterization_torch(*args, **options, covars=covars)
