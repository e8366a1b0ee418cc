"""Densification: gsplat's ``DefaultStrategy`` with a Gaussian budget and Mini-Splatting's blur split.

gsplat 1.4 has no cap on the count, which a same-budget comparison (and a student densified to a budget) needs;
Mini-Splatting (the official Distilled-3DGS student) also splits Gaussians that cover much of a view as its top
contributor ("blur"), whatever their gradient. Both are small changes to the grow step, so they live here, beside
nothing else, for teacher and student alike; a student's ``DensifyBudget`` (pruning.py) moves the cap and the stop
as its prunes require.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import duplicate, split
from torch import Tensor

from distilled3dgs_ns.pruning import DensifyBudget

BLUR_KEY = "top_contributions"
"""``info`` key of the step's per-Gaussian top-contributor pixel counts ``[N]`` (set by the model for blur split)."""
NO_RESET = 1 << 40
"""``reset_every`` that never comes: no opacity reset."""


@dataclass
class CappedStrategy(DefaultStrategy):
    """gsplat's ``DefaultStrategy`` that never grows beyond ``max_gaussians`` (gsplat 1.4 has no cap), with
    Mini-Splatting's blur split as an option.

    When more Gaussians qualify than the budget allows, the ones with the largest view-space gradient grow; the
    official code instead skips densification altogether once the count reaches its maximum. With
    ``blur_split_area``, a Gaussian that was the top contributor of more than that share of a view's pixels (the
    step's ``info[BLUR_KEY]``) since the last refinement is split at the next one, whatever its gradient. With a
    ``budget``, ``refine_stop_iter`` and ``max_gaussians`` are the budget's limits at every step.
    """

    max_gaussians: int | None = None
    blur_split_area: float | None = None
    budget: DensifyBudget | None = None

    def step_post_backward(self, params, optimizers, state, step, info, packed=False) -> None:
        if self.budget is not None:
            self.refine_stop_iter, self.max_gaussians = self.budget.limits(step, len(params["means"]))
        if self.blur_split_area is not None and step < self.refine_stop_iter and BLUR_KEY in info:
            n = len(params["means"])
            if not isinstance(state.get("blur"), Tensor) or state["blur"].shape != (n,):
                state["blur"] = torch.zeros(n, dtype=torch.bool, device=params["means"].device)
            state["blur"] |= (
                info[BLUR_KEY].to(state["blur"].device) > self.blur_split_area * info["width"] * info["height"]
            )
        super().step_post_backward(params, optimizers, state, step, info, packed)

    @torch.no_grad()
    def _grow_gs(
        self,
        params: dict[str, torch.nn.Parameter] | torch.nn.ParameterDict,
        optimizers: dict[str, torch.optim.Optimizer],
        state: dict[str, Any],
        step: int,
    ) -> tuple[int, int]:
        grads = state["grad2d"] / state["count"].clamp_min(1)
        is_small = torch.exp(params["scales"]).max(dim=-1).values <= self.grow_scale3d * state["scene_scale"]
        is_split = (grads > self.grow_grad2d) & ~is_small
        if step < self.refine_scale2d_stop_iter:
            is_split |= state["radii"] > self.grow_scale2d
        blur = state.get("blur")
        if isinstance(blur, Tensor) and blur.shape == is_split.shape:
            is_split |= blur
        is_dupli = (grads > self.grow_grad2d) & is_small
        candidates = is_dupli | is_split
        budget = len(params["means"]) if self.max_gaussians is None else self.max_gaussians - len(params["means"])
        budget = max(budget, 0)  # each duplicate or split adds one Gaussian
        if int(candidates.sum()) > budget:
            allowed = torch.zeros_like(candidates)
            allowed[torch.where(candidates, grads, -math.inf).topk(budget).indices] = True
            is_dupli &= allowed
            is_split &= allowed
        n_dupli, n_split = int(is_dupli.sum()), int(is_split.sum())
        if n_dupli > 0:
            duplicate(params=params, optimizers=optimizers, state=state, mask=is_dupli)
        if n_split > 0:
            is_split = torch.cat([is_split, torch.zeros(n_dupli, dtype=torch.bool, device=is_split.device)])
            split(
                params=params, optimizers=optimizers, state=state, mask=is_split, revised_opacity=self.revised_opacity
            )
        if "blur" in state:
            state["blur"] = torch.zeros(len(params["means"]), dtype=torch.bool, device=params["means"].device)
        return n_dupli, n_split
