"""LPIPS that never downloads: used when its AlexNet weights are already on disk, reported unavailable otherwise.

torchmetrics' LPIPS fetches torchvision's AlexNet weights (233 MB) on construction, which fails on an offline machine
and, inside splatfacto, breaks model construction itself. It also puts those weights into every checkpoint when it is
a registered submodule. This wrapper is a plain object (not an ``nn.Module``), built on first use.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from nerfstudio.utils.rich_utils import CONSOLE

ALEXNET_WEIGHTS_FILE = "alexnet-owt-7be5be79.pth"
"""The torchvision checkpoint torchmetrics' LPIPS (net_type="alex") loads."""


def alexnet_weights_path() -> Path:
    """Where torchvision looks for the AlexNet weights ($TORCH_HOME/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_WEIGHTS_FILE


class OptionalLPIPS:
    """Callable LPIPS metric that returns ``None`` (after one warning) when the weights cannot be had offline.

    Set ``DISTILLED3DGS_NO_LPIPS=1`` to skip LPIPS even when the weights are present (faster evaluation on CPU).
    """

    def __init__(self) -> None:
        self._metric: torch.nn.Module | None = None
        self._unavailable_reason: str | None = None

    @property
    def unavailable_reason(self) -> str | None:
        """Why LPIPS is not computed, or None when it is (or has not been tried yet)."""
        return self._unavailable_reason

    def _build(self, device: torch.device) -> torch.nn.Module | None:
        if self._metric is not None:
            return self._metric.to(device)
        if self._unavailable_reason is not None:
            return None
        if os.environ.get("DISTILLED3DGS_NO_LPIPS", "") not in ("", "0"):
            self._unavailable_reason = "disabled by DISTILLED3DGS_NO_LPIPS"
        elif not alexnet_weights_path().exists():
            self._unavailable_reason = (
                f"AlexNet weights not found at {alexnet_weights_path()} (offline machine?); "
                "copy alexnet-owt-7be5be79.pth there to enable it"
            )
        else:
            from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

            try:
                self._metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True).to(device)
            except (OSError, RuntimeError) as err:  # corrupt weights file, unreadable cache, ...
                self._unavailable_reason = f"could not load its weights ({err})"
        if self._unavailable_reason is not None:
            CONSOLE.print(f"[yellow]LPIPS unavailable: {self._unavailable_reason}. PSNR/SSIM are still reported.")
            return None
        return self._metric

    @torch.no_grad()
    def __call__(self, prediction: torch.Tensor, target: torch.Tensor) -> float | None:
        """LPIPS of two ``[1, 3, H, W]`` images in [0, 1], or None when unavailable."""
        metric = self._build(prediction.device)
        if metric is None:
            return None
        return float(metric(prediction.clamp(0.0, 1.0), target.clamp(0.0, 1.0)))
