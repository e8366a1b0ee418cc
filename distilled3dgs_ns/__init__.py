"""Distilled-3DGS for nerfstudio.

Every ``ns-*`` command imports this package through entry-point discovery, so it must stay light: no nerfstudio
import here (that would trip nerfstudio's import-order trap, see ``method_configs``), only the checkpoint-loading fix
that makes nerfstudio 1.1.5 usable under torch >= 2.6.
"""

from __future__ import annotations

__version__ = "0.1.0"


def allow_nerfstudio_checkpoints() -> None:
    """Let ``torch.load``'s safe (weights-only) unpickler read nerfstudio checkpoints.

    Since torch 2.6 ``torch.load`` defaults to ``weights_only=True``; splatfacto checkpoints store numpy float64
    learning rates in their scheduler state, so ns-eval / ns-viewer / ns-export / resuming all fail with
    ``UnpicklingError``. Allow-listing exactly the numpy types involved repairs every nerfstudio command without
    turning off the safe loader.
    """
    import numpy as np
    import torch

    add_safe_globals = getattr(torch.serialization, "add_safe_globals", None)
    if add_safe_globals is None:  # torch < 2.4 loads everything anyway
        return
    try:
        multiarray = np._core.multiarray  # numpy >= 2
    except AttributeError:
        multiarray = np.core.multiarray
    dtype_classes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)]
    add_safe_globals([multiarray.scalar, np.dtype, *dtype_classes])


allow_nerfstudio_checkpoints()
