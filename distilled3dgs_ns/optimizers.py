"""Adam with torch's fused kernel for the Gaussian parameters.

torch's default Adam on a CPU walks each parameter a dozen times per step (moments, bias corrections, square root,
division, update); the fused kernel does it in one pass, which is several times faster on the large ``features_rest``
tensors and the same update (tests compare). Saved configs name this class: it must not move.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def _fused_devices() -> set[str]:
    """Device types with a fused Adam kernel in this torch (private API: empty, hence unfused, if it moves)."""
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        return set(_get_fused_kernels_supported_devices())
    except ImportError:
        return set()


class FusedAdam(torch.optim.Adam):
    """``torch.optim.Adam`` with ``fused=True`` where every parameter's device has the kernel, else torch's default."""

    def __init__(self, params: Iterable[Any], **kwargs: Any):
        params = list(params)
        tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
        if "fused" not in kwargs and tensors:
            supported = _fused_devices()
            kwargs["fused"] = all(p.device.type in supported and p.is_floating_point() for p in tensors)
        super().__init__(params, **kwargs)
