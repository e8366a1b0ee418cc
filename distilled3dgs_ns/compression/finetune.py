"""LightGaussian's fine-tuning after VQ: codebook and all other attributes train, the code assignment stays fixed.

The model renders through its own ``get_outputs`` and scores with its own ``get_loss_dict`` (in eval mode: full
resolution, no densification, no camera optimiser, GT-only loss). Quantised Gaussians keep their ``features_rest``
rows equal to their code: after each backward pass the gradients of those rows are summed into the codebook's
(``index_add``, the gradient of the gather) and zeroed, so Adam never moves them on their own; then the rows are
refreshed from the updated codebook.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.models.splatfacto import SplatfactoModel
from torch import Tensor

from distilled3dgs_ns.compression.compact_format import CompactGaussians
from distilled3dgs_ns.compression.encode import pack
from distilled3dgs_ns.compression.model_io import apply_to_model, model_params
from distilled3dgs_ns.cpu_threads import thread_policy
from distilled3dgs_ns.optimizers import FusedAdam
from distilled3dgs_ns.progress import progress_bar

ViewSource = Callable[[int], tuple[Cameras, dict[str, Tensor]]]
"""``views(step) -> (camera, batch)`` with ``batch["image"]``, e.g. a ``FullImageDatamanager.next_train``."""


@dataclass
class FinetuneOptions:
    """Short fine-tuning after quantisation (0 steps: none). Learning rates are splatfacto's, means at its final."""

    steps: int = 2000
    """Fine-tuning steps, one training view each (LightGaussian: 5000 on a GPU); 0: none. Demo student (1.8k
    Gaussians, every SH rest from 129 codes), test PSNR against its PLY, two k-means seeds: 0 steps about -0.6 dB,
    1000 steps -0.26 / -0.23 dB (26 s on 2 CPU cores), 2000 steps -0.20 / -0.18 dB (51 s)."""
    means_lr: float = 1.6e-6
    """Adam learning rate of the positions (splatfacto's final one: the geometry is already converged)."""
    scales_lr: float = 0.005
    """Adam learning rate of the log scales."""
    quats_lr: float = 0.001
    """Adam learning rate of the rotations."""
    opacities_lr: float = 0.05
    """Adam learning rate of the opacity logits."""
    features_dc_lr: float = 0.0025
    """Adam learning rate of the SH DC coefficients."""
    features_rest_lr: float = 0.0025 / 20
    """Adam learning rate of the SH rest coefficients of the Gaussians outside the codebook (splatfacto's)."""
    codebook_lr: float = 3 * 0.0025 / 20
    """Adam learning rate of the codebook's entries: three times splatfacto's SH rate, since a code serves many
    Gaussians (demo student, 1000 steps: +0.04 dB over 1x; 10x is no better)."""


def finetune_compact(
    model: SplatfactoModel,
    gaussians: CompactGaussians,
    views: ViewSource,
    options: FinetuneOptions,
    progress: bool = True,
) -> tuple[CompactGaussians, list[float]]:
    """Fine-tune ``gaussians`` in ``model`` (which holds them afterwards); returns them re-packed (fixed point, same
    assignment) and the loss of every step."""
    apply_to_model(model, gaussians)
    params = model.gauss_params
    rows = gaussians.vq_mask.nonzero().view(-1).to(params["means"].device)
    indices = gaussians.indices.to(rows.device)
    codebook = torch.nn.Parameter(gaussians.codebook.to(rows.device).clone())
    lrs = {name: getattr(options, f"{name}_lr") for name in params}
    optimizers = [FusedAdam([params[name]], lr=lr, eps=1e-15) for name, lr in lrs.items()]
    optimizers.append(FusedAdam([codebook], lr=options.codebook_lr, eps=1e-15))
    was_training = model.training
    model.eval()
    # the process's policy for the model's setting (cpu_threads.py); any splatfacto model, ours have the field
    setting = getattr(model.config, "cpu_threads", None)
    threads = thread_policy(setting) if rows.device.type == "cpu" else None
    losses: list[float] = []
    try:
        with progress_bar("fine-tuning (VQ assignment fixed)", options.steps, progress) as advance:
            for step in range(options.steps):
                if threads is not None:
                    threads.update()
                camera, batch = views(step)
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    outputs = model.get_outputs(camera)
                    loss = sum(model.get_loss_dict(outputs, batch).values())
                    loss.backward()
                _tie_gradients(params["features_rest"], codebook, rows, indices)
                for optimizer in optimizers:
                    optimizer.step()
                with torch.no_grad():
                    params["features_rest"][rows] = codebook[indices]
                losses.append(float(loss.detach()))
                advance(status=f"loss {losses[-1]:.4f}")
    finally:
        model.train(was_training)
    tuned = pack(
        model_params(model), gaussians.sh_degree, gaussians.vq_mask, codebook.detach(), indices, gaussians.metadata
    )
    apply_to_model(model, tuned)
    return tuned, losses


def _tie_gradients(features_rest: Tensor, codebook: Tensor, rows: Tensor, indices: Tensor) -> None:
    """Move the quantised rows' gradients onto their codes (the gather's backward) and zero them on the rows."""
    grad = features_rest.grad
    codebook.grad = torch.zeros_like(codebook)
    if grad is None:
        return
    codebook.grad.index_add_(0, indices, grad[rows])
    grad[rows] = 0
