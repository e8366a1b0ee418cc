"""Which Gaussians matter, and removing the others without breaking the optimizers.

Scores: the accumulated blending weight (Mini-Splatting / Distilled-3DGS), the top-contribution count (Mini-Splatting's
area_max) and LightGaussian's global significance.
Selections: importance-proportional sampling without replacement, a cumulative-mass cut, a lowest-share cut and a
top-count cut; all return boolean *keep* masks. ``prune_gaussians`` applies a keep mask to parameters, Adam state and
strategy state. ``PruneSchedule`` is the student's prune events as a small strategy (gsplat's idiom): it resolves
them from run fractions and applies them in ``step_post_backward``; ``DensifyBudget`` says when the student densifies
and up to what count; ``PRUNE_SCORES`` turns a score's name into the passes over the training views it needs. All three
can be tested without a model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import torch
from gsplat.strategy.ops import remove
from torch import Tensor

from distilled3dgs_ns.names import PAPER_RUN_LENGTH
from distilled3dgs_ns.schedules import to_step

View = TypeVar("View")
PruneScore = Literal["blending-weight", "top-contributions", "global-significance"]


def accumulated_blending_weight(
    render_fn: Callable[[Tensor, View], Tensor],
    num_gaussians: int,
    views: Iterable[View],
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> Tensor:
    """Per-Gaussian sum over views and pixels of its blending weight ``alpha_i * T_i``; returns ``[N]`` (detached).

    A compositor is linear in colour, ``image = sum_i w_i c_i + T_final * background``, so the gradient of
    ``image.sum()`` w.r.t. a per-Gaussian scalar colour is ``sum_pixels w_i``: one backward per view, any rasteriser.
    ``render_fn(colors, view)`` must render ``colors`` (``[N, 1]``, requires grad) as the Gaussians' colour and return
    the single-channel image; it should not clamp it or detach the colours. The colour value (0.5) is irrelevant to a
    linear compositor and keeps clear of clamps at 0 and 1. ``progress(k)`` is called after the k-th view.
    """
    importance = torch.zeros(num_gaussians, device=device)
    for count, view in enumerate(views, start=1):
        colors = torch.full((num_gaussians, 1), 0.5, device=device, requires_grad=True)
        with torch.enable_grad():
            image = render_fn(colors, view)
            if image.requires_grad:  # a view seeing no Gaussian may yield a constant image
                (grad,) = torch.autograd.grad(image.sum(), colors, allow_unused=True)
                if grad is not None:
                    importance += grad.detach().view(-1).to(importance)
        if progress is not None:
            progress(count)
    return importance


def top_contribution_score(top_counts: Tensor, blending_weights: Tensor) -> Tensor:
    """The ``top-contributions`` prune score ``[N]``: the pixels where a Gaussian has the largest blending weight,
    ties (Gaussians winning as many pixels, often none) broken by its summed blending weight, scaled below one pixel.
    A Gaussian that dominates a few pixels outranks one that adds a little everywhere: what a count budget keeps
    should be the Gaussians whose removal changes pixels most."""
    return top_counts.to(blending_weights) + blending_weights / (2 * blending_weights.max().clamp_min(1e-30))


class TrainingViewMeasures(Protocol):
    """Per-Gaussian measures over the training views that the prune scores are made of (the student provides them)."""

    def blending_importance(self) -> Tensor:
        """Summed blending weight ``[N]`` by one backward pass per view (any rasteriser)."""
        ...

    def top_contributions_and_weights(self) -> tuple[Tensor, Tensor]:
        """Top-contributor pixel counts and summed blending weights ``[N]`` from one forward pass per view."""
        ...

    def significance(self) -> Tensor:
        """LightGaussian's global significance ``[N]``."""
        ...


ScoreAndTops = tuple[Tensor, Tensor | None]
"""A prune score ``[N]`` and, for the intersection filter, the top-contributor pixel counts ``[N]`` (else None)."""


def _blending_weight_score(views: TrainingViewMeasures, top_filter: bool) -> ScoreAndTops:
    if not top_filter:
        return views.blending_importance(), None
    tops, weights = views.top_contributions_and_weights()  # the filter's pass gives the weights too
    return weights, tops


def _top_contributions_score(views: TrainingViewMeasures, top_filter: bool) -> ScoreAndTops:
    tops, weights = views.top_contributions_and_weights()
    return top_contribution_score(tops, weights), tops if top_filter else None


def _significance_score(views: TrainingViewMeasures, top_filter: bool) -> ScoreAndTops:
    return views.significance(), views.top_contributions_and_weights()[0] if top_filter else None


PRUNE_SCORES: dict[PruneScore, Callable[[TrainingViewMeasures, bool], ScoreAndTops]] = {
    "blending-weight": _blending_weight_score,
    "top-contributions": _top_contributions_score,
    "global-significance": _significance_score,
}
"""Each ``PruneScore``: the score and, with the intersection filter (the bool), the top-contributor counts, from the
fewest passes over the training views."""


def _percentile(values: Tensor, q: float) -> Tensor:
    """Linear-interpolation percentile (numpy's default) via ``kthvalue``: ``torch.quantile`` caps at 2^24 inputs."""
    position = q * (values.numel() - 1)
    below, above = math.floor(position), math.ceil(position)
    low = values.kthvalue(below + 1).values
    high = values.kthvalue(above + 1).values
    return low + (high - low) * (position - below)


def global_significance(
    hit_counts: Tensor,
    opacities: Tensor,
    scales: Tensor,
    beta: float = 0.1,
    volume_percentile: float = 0.9,
) -> Tensor:
    """LightGaussian's score ``hit_count * opacity * V_norm^beta`` (``[N]``), as described in its paper.

    ``V`` is the product of the three *activated* scales, normalised by its ``volume_percentile`` percentile and
    clipped to [0, 1], so a few huge Gaussians cannot dominate while tiny ones are still discounted. (The official
    LightGaussian code normalises by the 10th-largest-percent value without clipping; we follow the paper.)
    """
    n = hit_counts.shape[0]
    if hit_counts.shape != (n,) or opacities.reshape(-1).shape != (n,) or scales.shape != (n, 3):
        raise ValueError(
            "expected hit_counts [N], opacities [N] or [N, 1], scales [N, 3]; got "
            f"{tuple(hit_counts.shape)}, {tuple(opacities.shape)}, {tuple(scales.shape)}"
        )
    if n == 0:
        return torch.zeros(0, device=scales.device, dtype=scales.dtype)
    volume = scales.prod(dim=1)
    reference = _percentile(volume, volume_percentile).clamp_min(torch.finfo(volume.dtype).tiny)
    volume_norm = (volume / reference).clamp(0.0, 1.0)
    return hit_counts.to(volume) * opacities.reshape(-1).to(volume) * volume_norm.pow(beta)


def _check_importance(importance: Tensor) -> None:
    if importance.ndim != 1:
        raise ValueError(f"importance must be a 1-D tensor, got shape {tuple(importance.shape)}")
    if not torch.isfinite(importance).all() or (importance < 0).any():
        raise ValueError("importance must be finite and non-negative")


def sample_by_importance(importance: Tensor, factor: float, generator: torch.Generator | None = None) -> Tensor:
    """Keep ``round(factor * #(importance > 0))`` Gaussians drawn without replacement, probability ∝ importance.

    Efraimidis-Spirakis exponential race: key ``-E_i / w_i`` with ``E_i ~ Exp(1)``; the top-k keys are a weighted
    sample without replacement with the same law as successive draws, for any N (``torch.multinomial`` stops at
    2^24 categories). Zero-importance Gaussians get key ``-inf`` and are never picked.
    """
    _check_importance(importance)
    if factor < 0:
        raise ValueError(f"factor must be >= 0, got {factor}")
    positive = importance > 0
    count = min(round(factor * int(positive.sum())), int(positive.sum()))
    keep = torch.zeros_like(importance, dtype=torch.bool)
    if count == 0:
        return keep
    # the race runs where the generator draws (a CPU one for a CUDA model, say), in double precision (not on MPS)
    draws_on = generator.device if generator is not None else torch.device("cpu")
    weights = importance.detach().to(draws_on, torch.float64)
    race = torch.empty_like(weights).exponential_(generator=generator)
    keys = torch.where(positive.to(draws_on), -race / weights.clamp_min(torch.finfo(weights.dtype).tiny), -math.inf)
    keep[keys.topk(count).indices.to(keep.device)] = True
    return keep


def mass_cut(importance: Tensor, mass: float = 0.99) -> Tensor:
    """Keep the fewest Gaussians holding at least ``mass`` of the total importance (the cumulative-mass cut).

    Sorted by descending importance with ties broken by index (stable sort), so the result is deterministic; a
    zero-importance Gaussian is never kept, since the prefix already reaches the full mass before them.
    """
    _check_importance(importance)
    if not 0.0 <= mass <= 1.0:
        raise ValueError(f"mass must be in [0, 1], got {mass}")
    keep = torch.zeros_like(importance, dtype=torch.bool)
    order = torch.sort(importance, descending=True, stable=True).indices
    cumulative = importance.detach().cpu().double()[order.cpu()].cumsum(0)  # double: not on MPS
    if cumulative.numel() == 0:
        return keep
    target = mass * cumulative[-1]
    if target <= 0:
        return keep
    count = int(torch.searchsorted(cumulative, target.reshape(1), right=False)) + 1
    keep[order[:count]] = True
    return keep


def lowest_share_mask(scores: Tensor, share: float) -> Tensor:
    """Keep all but the ``round(share * N)`` lowest scores (LightGaussian's prune ratio); ties drop lower indices."""
    if scores.ndim != 1:
        raise ValueError(f"scores must be a 1-D tensor, got shape {tuple(scores.shape)}")
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    keep = torch.ones_like(scores, dtype=torch.bool)
    order = torch.sort(scores, stable=True).indices
    keep[order[: round(share * scores.numel())]] = False
    return keep


def top_count_mask(scores: Tensor, count: int) -> Tensor:
    """Keep the ``count`` highest scores (ties keep lower indices); a zero score is never kept, so fewer may remain."""
    if scores.ndim != 1:
        raise ValueError(f"scores must be a 1-D tensor, got shape {tuple(scores.shape)}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    keep = torch.zeros_like(scores, dtype=torch.bool)
    order = torch.sort(scores, descending=True, stable=True).indices[: min(count, scores.numel())]
    keep[order] = True
    return keep & (scores > 0)


@torch.no_grad()
def restart_adam(
    params: torch.nn.ParameterDict | dict[str, torch.nn.Parameter],
    optimizers: dict[str, torch.optim.Optimizer],
    values: dict[str, Tensor] | None = None,
) -> None:
    """Replace every parameter by a fresh one (``values``, default the current ones) with empty Adam state, as the
    official code's ``training_setup`` after each prune: moments gathered before a prune point the survivors the
    wrong way."""
    values = dict(params) if values is None else values
    for name in list(params.keys()):
        param = torch.nn.Parameter(values[name].detach().clone())
        optimizer = optimizers[name]
        optimizer.state.pop(optimizer.param_groups[0]["params"][0], None)
        optimizer.param_groups[0]["params"] = [param]
        params[name] = param


def prune_gaussians(
    params: torch.nn.ParameterDict | dict[str, torch.nn.Parameter],
    optimizers: dict[str, torch.optim.Optimizer],
    strategy_state: dict[str, Any],
    keep: Tensor,
) -> None:
    """Remove, in place, the Gaussians where ``keep`` is False.

    Every parameter needs its own optimizer (gsplat's contract). Parameters are replaced by new ``Parameter`` objects
    (``requires_grad=True``); each optimizer's param_group is re-pointed and its state sliced (Adam ``exp_avg``,
    ``exp_avg_sq``; ``step`` untouched). Every tensor in ``strategy_state`` whose first dim is N is sliced; other
    entries (scalars, non-per-Gaussian tensors, ``None``) are left alone. Built on ``gsplat.strategy.ops.remove``,
    which would slice *every* strategy tensor, so the state is handled here. Any other reference to the old
    Parameters (e.g. a cached parameter list) is stale afterwards.
    """
    if not params:
        raise ValueError("params is empty")
    n = next(iter(params.values())).shape[0]
    if keep.dtype != torch.bool or keep.shape != (n,):
        raise ValueError(f"keep must be a bool tensor of shape ({n},), got {keep.dtype} {tuple(keep.shape)}")
    for name, param in params.items():
        if param.shape[0] != n:
            raise ValueError(f"params[{name!r}] has {param.shape[0]} rows, expected {n} like the others")
        groups = optimizers[name].param_groups if name in optimizers else []
        if not groups or any(len(group["params"]) != 1 or group["params"][0] is not param for group in groups):
            raise ValueError(f"optimizers[{name!r}] must exist and hold exactly params[{name!r}] in each param_group")
    keep = keep.to(next(iter(params.values())).device)
    remove(params=params, optimizers=optimizers, state={}, mask=~keep)
    for key, value in strategy_state.items():
        if isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == n:
            strategy_state[key] = value[keep.to(value.device)]


PruneKind = Literal["sample", "share", "mass", "count"]
KIND_ORDER: tuple[PruneKind, ...] = ("sample", "share", "mass", "count")
"""Order of events that fall on the same step."""
KIND_NAMES = {
    "sample": "importance sampling",
    "share": "lowest-share cut",
    "mass": "importance mass cut",
    "count": "count cut",
}


def staged_count_events(count: int, start: float, stop: float | None, stages: int) -> list[PruneEvent]:
    """A count cut to ``count`` in ``stages`` evenly spaced events from ``start`` to ``stop`` (fractions of the run)."""
    if stages < 1:
        raise ValueError(f"a count cut needs at least one stage, got {stages}")
    if stages == 1 or stop is None:
        return [PruneEvent("count", start, float(count))]
    if stop < start:
        raise ValueError(f"the count cut's last stage ({stop}) comes before its first ({start})")
    return [
        PruneEvent("count", start + (stop - start) * k / (stages - 1), float(count), stages_left=stages - k)
        for k in range(stages)
    ]


@dataclass(frozen=True)
class PruneEvent:
    """One prune: ``kind`` at ``at`` (a fraction of the run) with its ``value``: the sampling factor, the share
    removed, the importance mass kept, or the number of Gaussians kept."""

    kind: PruneKind
    at: float
    value: float
    stages_left: int = 1
    """For a count cut reached in stages: this one and the later ones. Each keeps ``n * (value / n) ** (1 /
    stages_left)`` of the ``n`` Gaussians it finds, a geometric approach to ``value`` that adapts to what the
    densification or earlier cuts left."""


@dataclass(frozen=True)
class PruneResult:
    """What one event did (for logs)."""

    event: PruneEvent
    step: int
    before: int
    after: int

    def describe(self) -> str:
        return f"step {self.step}: {KIND_NAMES[self.event.kind]} kept {self.after} of {self.before} Gaussians"


Scores = Callable[[], tuple[Tensor, Tensor | None]]
"""Computes ``(importance [N], top-contributor pixel counts [N] or None)`` over the training views, when due."""


@dataclass
class PruneSchedule:
    """The prune events of a run, resolved against its length; ``step_post_backward`` applies the ones due.

    With ``top_filter`` (Mini-Splatting's intersection-preserving filter) a Gaussian that is never the top contributor
    of any training pixel scores 0 before sampling and the share and mass cuts, so they only choose among the ones
    that shape the image; a count cut keeps every top contributor before any other, and fills the rest of its budget
    by score, so a budget is met even where fewer Gaussians win a pixel. Each event fires at exactly one step, so a
    resumed run never repeats one.
    """

    events: list[PruneEvent] = field(default_factory=list)
    top_filter: bool = False
    seed: int = 0
    run_length: int = PAPER_RUN_LENGTH
    reinitialize_after_sample: bool = False
    """Re-initialise the Gaussians the sampling prune keeps (the official code's)."""
    fresh_optimizer: bool = False
    """Restart Adam after every other prune."""

    def __post_init__(self) -> None:
        for event in self.events:
            if not 0.0 <= event.at <= 1.0:
                raise ValueError(f"a {event.kind} prune is scheduled at a run fraction in [0, 1], got {event.at}")
        self.events = sorted(self.events, key=lambda e: (e.at, KIND_ORDER.index(e.kind)))
        self.generator = torch.Generator().manual_seed(self.seed)

    def step_of(self, event: PruneEvent) -> int:
        return to_step(event.at, self.run_length)

    def steps(self) -> list[int]:
        """The steps of the events, ascending (one entry per event)."""
        return [self.step_of(event) for event in self.events]

    def first_step(self) -> int | None:
        return self.steps()[0] if self.events else None

    def due(self, step: int) -> list[PruneEvent]:
        return [event for event in self.events if self.step_of(event) == step]

    def count_cuts(self) -> list[PruneEvent]:
        """The count cuts, in order (a staged budget's stages)."""
        return [event for event in self.events if event.kind == "count"]

    def count_budget(self) -> int | None:
        """The count the last count cut keeps (None without count cuts)."""
        cuts = self.count_cuts()
        return int(cuts[-1].value) if cuts else None

    def regrow_until(self, step: int, count: int) -> int | None:
        """The step densification runs to while count cuts have left fewer than the budget (None: no regrowth now).

        A cut keeps no Gaussian that scores 0 (no weight in any training view), so cuts that come before a start has
        grown (random points, or a sparse cloud) can leave it far below its budget with densification stopped. Between
        the first and the last count cut it then grows back, capped at the budget. Decided from the step and the count
        alone, so a resumed run decides the same.
        """
        cuts = self.count_cuts()
        if not cuts or count >= cuts[-1].value:
            return None
        first, last = self.step_of(cuts[0]), self.step_of(cuts[-1])
        return last if first <= step < last else None

    def keep_mask(self, event: PruneEvent, importance: Tensor, top_counts: Tensor | None = None) -> Tensor:
        """The Gaussians ``event`` keeps, given their importance (and top-contributor counts for the filter)."""
        if self.top_filter:
            if top_counts is None:
                raise ValueError("the top-contributor filter needs the top-contributor counts")
            wins = top_counts > 0
            if event.kind == "count":  # a budget is filled: every top contributor first, then the best of the rest
                importance = importance + wins * (importance.max() + 1)
            else:
                importance = torch.where(wins, importance, torch.zeros_like(importance))
        if event.kind == "sample":
            return sample_by_importance(importance, event.value, self.generator)
        if event.kind == "share":
            return lowest_share_mask(importance, event.value)
        if event.kind == "mass":
            return mass_cut(importance, event.value)
        n = len(importance)
        count = int(event.value)
        if n > count and event.stages_left > 1:
            count = round(n * (count / n) ** (1 / event.stages_left))
        return top_count_mask(importance, count)

    def restart_after(self, event: PruneEvent) -> Literal["reinitialize", "optimizer"] | None:
        """What follows ``event``: re-initialised Gaussians (fresh Adam state too), fresh Adam state, or nothing."""
        if event.kind == "sample" and self.reinitialize_after_sample:
            return "reinitialize"
        return "optimizer" if self.fresh_optimizer else None

    def step_post_backward(
        self,
        params: torch.nn.ParameterDict | dict[str, torch.nn.Parameter],
        optimizers: dict[str, torch.optim.Optimizer],
        state: dict[str, Any],
        step: int,
        scores: Scores,
    ) -> list[PruneResult]:
        """Apply the events due at ``step`` in place (scores recomputed before each); returns what each did."""
        results = []
        for event in self.due(step):
            importance, top_counts = scores()
            before = len(importance)
            prune_gaussians(params, optimizers, state, self.keep_mask(event, importance, top_counts))
            results.append(PruneResult(event, step, before, len(next(iter(params.values())))))
        return results


@dataclass
class DensifyBudget:
    """When the student densifies and up to what count: until ``stop`` (its first prune, or where splitting stops)
    under ``cap``; and again, capped at the schedule's count budget, while its count cuts have left fewer Gaussians
    than the budget (``PruneSchedule.regrow_until``). ``limits`` depends on the step and the count alone, so a resumed
    run decides the same; ``CappedStrategy`` applies it at every step."""

    schedule: PruneSchedule
    stop: int
    cap: int | None = None
    regrowing: bool = False
    """Whether the last ``limits`` call regrew (the student logs when it starts)."""

    def limits(self, step: int, count: int) -> tuple[int, int | None]:
        """``(the step densification stops at, the most Gaussians it may grow to)`` at ``step`` with ``count``."""
        until = self.schedule.regrow_until(step, count)
        self.regrowing = until is not None
        budget = self.schedule.count_budget()
        if until is None or budget is None:
            return self.stop, self.cap
        return until, budget if self.cap is None else min(self.cap, budget)
