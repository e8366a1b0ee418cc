"""Checkpoints: their names, reading them, the finiteness check, and loading a trained pipeline beside its config.

One home for these facts because every command needs them: a run folder copied or moved elsewhere must load the
checkpoint beside the ``config.yml`` it was given (nerfstudio's ``eval_setup`` follows the absolute ``output_dir``
saved in the config, i.e. the original folder); a truncated file must name itself instead of raising from the depths
of ``torch.load``; and a diverged model (non-finite Gaussians) must be stopped where it appears, not evaluated as a
bad-but-valid splat.

Import-order rule (see method_configs.py): nothing from ``nerfstudio.utils.eval_utils`` at module level.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from distilled3dgs_ns.errors import UserError, unreadable_checkpoint

CHECKPOINT_GLOB = "step-*.ckpt"
MODEL_DIR = "nerfstudio_models"
DIVERGED_FIX = (
    "lower the learning rates you raised (e.g. --optimizers.scales.optimizer.lr) or the loss weights, then train "
    "again from an earlier checkpoint or afresh"
)


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message names the file."""


class DivergedError(UserError):
    """A model whose Gaussians hold NaN or infinity: training diverged."""


def checkpoint_name(step: int) -> str:
    return f"step-{step:09d}.ckpt"


def checkpoint_step(path: Path) -> int:
    """The step in a ``step-<step>.ckpt`` file name."""
    return int(path.stem.split("-")[-1])


def newest_checkpoint(model_dir: Path) -> Path | None:
    """The ``step-*.ckpt`` with the highest step in ``model_dir``, or None."""
    checkpoints = sorted(model_dir.glob(CHECKPOINT_GLOB), key=checkpoint_step)
    return checkpoints[-1] if checkpoints else None


def read_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load`` on the CPU; a truncated or foreign file is a one-line error naming it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a corrupt or foreign file
        raise CheckpointError(unreadable_checkpoint(path, error)) from None
    if not isinstance(state, dict) or "pipeline" not in state:
        raise CheckpointError(f"{path} holds no 'pipeline' state; it is not a nerfstudio checkpoint")
    return state


def non_finite_rows(params: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Per parameter, how many Gaussians hold a NaN or infinity (empty when all are finite)."""
    counts = {}
    for name, value in params.items():
        # A finite sum means finite entries (one read, no mask: this runs every step); an infinite sum of finite
        # entries (overflow) is told apart by the exact check.
        if bool(torch.isfinite(value.detach().sum())) or bool(torch.isfinite(value).all()):
            continue
        counts[name] = int((~torch.isfinite(value.detach().reshape(value.shape[0], -1))).any(dim=1).sum())
    return counts


def check_finite(params: Mapping[str, torch.Tensor], where: str) -> None:
    """Raise ``DivergedError`` if any Gaussian parameter is non-finite; ``where`` says which model or file."""
    counts = non_finite_rows(params)
    if counts:
        total = next(iter(params.values())).shape[0]
        which = ", ".join(f"{count} of {total} {name}" for name, count in counts.items())
        raise DivergedError(f"{where}: training diverged, non-finite Gaussians ({which}); {DIVERGED_FIX}")


def gaussian_state(pipeline_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``gauss_params.*`` tensors of a checkpoint's pipeline state, by parameter name."""
    marker = "gauss_params."
    return {key.split(marker, 1)[1]: value for key, value in pipeline_state.items() if marker in key}


def load_pipeline(
    config_path: Path, data: Path | None = None, test_mode: str = "test", device: str | None = None
) -> Any:
    """The trained pipeline of ``config.yml`` with the newest checkpoint *beside it* (nerfstudio's ``eval_setup``
    reads the original run folder's); ``data`` replaces the scene path saved in the config; ``device``: where it runs
    (None: CUDA where there is one, as nerfstudio's ``ns-eval``)."""
    import yaml
    from nerfstudio.configs.method_configs import all_methods

    config_path = Path(config_path)
    if not config_path.is_file():
        kind = "a folder" if config_path.is_dir() else "missing"
        raise CheckpointError(f"{config_path} is {kind}; pass the config.yml that ns-train wrote")
    config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
    model_dir = config_path.parent / getattr(config, "relative_model_dir", Path(MODEL_DIR))
    checkpoint = newest_checkpoint(model_dir)
    if checkpoint is None:
        raise CheckpointError(f"{config_path}: no checkpoint ({CHECKPOINT_GLOB}) in {model_dir}")
    state = read_checkpoint(checkpoint)
    check_finite(gaussian_state(state["pipeline"]), str(checkpoint))  # the model checks again; this names the file
    config.pipeline.datamanager._target = all_methods[config.method_name].pipeline.datamanager._target
    if data is not None:
        config.data = config.pipeline.datamanager.data = config.pipeline.datamanager.dataparser.data = data
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        pipeline = config.pipeline.setup(device=device, test_mode=test_mode)
    except FileNotFoundError as error:
        raise CheckpointError(
            f"{config_path}: {error}. If the scene moved or the config's data path is relative to another folder, "
            "pass --data <scene folder>"
        ) from None
    pipeline.eval()
    pipeline.load_pipeline(state["pipeline"], state["step"])
    print(f"Loaded {checkpoint}")
    return pipeline
