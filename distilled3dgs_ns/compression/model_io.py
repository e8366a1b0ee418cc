"""Between a splatfacto-family model and ``CompactGaussians``: read its parameters, or make it render a compact
or viewer file (see ``formats``)."""

from __future__ import annotations

import torch
from nerfstudio.models.splatfacto import SplatfactoModel
from torch import Tensor

from distilled3dgs_ns.compression.compact_format import CompactGaussians
from distilled3dgs_ns.compression.encode import visible_mask
from distilled3dgs_ns.portable_splatfacto import GAUSSIAN_PARAM_NAMES


def model_of(pipeline_or_model) -> SplatfactoModel:
    """The splatfacto-family model of a pipeline (``eval_setup``'s) or the model itself."""
    model = getattr(pipeline_or_model, "model", pipeline_or_model)
    if not isinstance(model, SplatfactoModel):
        raise TypeError(f"expected a Gaussian splatting model (splatfacto family), got {type(model).__name__}")
    return model


def model_params(model: SplatfactoModel) -> dict[str, Tensor]:
    """Detached copies of the Gaussian parameters, keyed by splatfacto's names."""
    return {name: model.gauss_params[name].detach().clone() for name in GAUSSIAN_PARAM_NAMES}


def apply_to_model(model: SplatfactoModel, gaussians: CompactGaussians) -> None:
    """Replace the model's Gaussians with ``gaussians`` (new Parameters on the model's device), so that
    ``model.get_outputs`` renders the compact scene; optimizers holding the old Parameters are stale afterwards."""
    if model.config.sh_degree != gaussians.sh_degree:
        raise ValueError(
            f"the compact scene has SH degree {gaussians.sh_degree}, the model {model.config.sh_degree}: "
            "load it into a model of the same configuration"
        )
    device = model.gauss_params["means"].device
    for name, value in gaussians.params().items():
        model.gauss_params[name] = torch.nn.Parameter(value.detach().to(device=device, dtype=torch.float32).clone())


def gaussians_of(model: SplatfactoModel, drop_invisible: bool = True) -> CompactGaussians:
    """The model's Gaussians, float32 and unquantised (quaternions as the model holds them), e.g. for ``write_ply``.

    With ``drop_invisible`` those that cannot show are left out, as ``ns-export gaussian-splat`` does.
    """
    params = model_params(model)
    device = params["means"].device
    keep = visible_mask(params) if drop_invisible else torch.ones(model.num_points, dtype=torch.bool, device=device)
    params = {name: value[keep] for name, value in params.items()}
    return CompactGaussians(
        **params,
        sh_degree=model.config.sh_degree,
        vq_mask=torch.zeros(params["means"].shape[0], dtype=torch.bool, device=device),
        codebook=params["features_rest"].new_zeros(0, *params["features_rest"].shape[1:]),
        indices=torch.zeros(0, dtype=torch.long, device=device),
    )
