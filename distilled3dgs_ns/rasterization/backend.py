"""Which rasteriser renders: gsplat's CUDA kernels when they load, else our torch one, decided once per process.

gsplat 1.4.0 compiles its kernels on first use (nvcc and ninja needed, minutes). Without a CUDA toolkit it prints a
line and leaves its extension ``None`` (the first render then dies with ``'NoneType' object has no attribute ...``);
with a toolkit that does not match torch's CUDA build the compile fails deep inside ``torch.utils.cpp_extension``.
``gsplat_problem`` turns both into one line, ``choose_backend`` falls back to the torch rasteriser for ``auto``
(with one warning saying how to get the fast path) and refuses for ``gsplat``.
"""

from __future__ import annotations

import warnings
from functools import cache

import torch

from distilled3dgs_ns.errors import UserError


class GsplatUnavailable(UserError):
    """``rasterizer gsplat`` was asked for and gsplat's CUDA kernels cannot be built or loaded."""


def _toolkit_hint() -> str:
    wanted = torch.version.cuda or "matching torch's"
    return (
        f"install the CUDA toolkit {wanted} (torch's build) with nvcc and ninja on PATH, or point CUDA_HOME at it, "
        "then run once to compile gsplat's kernels"
    )


@cache
def gsplat_problem() -> str | None:
    """None when gsplat's CUDA kernels load; else why not, in one line (checked once per process)."""
    try:
        from gsplat.cuda._backend import _C
    except Exception as error:  # a failed JIT build raises anything from OSError to CalledProcessError
        first = (str(error).strip().splitlines() or [type(error).__name__])[-1][:200]
        return f"gsplat's CUDA kernels failed to build ({type(error).__name__}: {first})"
    if _C is None:
        return "gsplat found no CUDA toolkit (nvcc) to build its kernels"
    return None


@cache
def _warn_fallback(problem: str) -> None:
    warnings.warn(
        f"{problem}; rendering with the pure-PyTorch rasteriser instead (slower). For the fast path: {_toolkit_hint()}",
        RuntimeWarning,
        stacklevel=3,
    )


def on_cuda(device: torch.device) -> bool:
    """Whether tensors on ``device`` are gsplat's to render (CUDA)."""
    return device.type == "cuda"


def choose_backend(backend: str, device: torch.device) -> str:
    """``"gsplat"`` or ``"torch"`` for a ``rasterization(backend=...)`` request on ``device``."""
    if backend == "torch" or (backend == "auto" and not on_cuda(device)):
        return "torch"
    problem = gsplat_problem()
    if problem is None:
        return "gsplat"
    if backend == "gsplat":
        raise GsplatUnavailable(f"--pipeline.model.rasterizer gsplat: {problem}; {_toolkit_hint()}, or use auto")
    _warn_fallback(problem)
    return "torch"
