"""The two teacher regularisers of Distilled-3DGS: random parameter perturbation and Gaussian dropout.

A teacher variant is one of these objects plugged into the teacher model; the render code never asks which variant
it is. Each regulariser has two hooks: ``render_opacities`` (render time, training only) and ``after_step`` (after
the optimizer step, before densification), and does nothing outside its ``RunWindow``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from distilled3dgs_ns.schedules import RunWindow, paper_fraction, to_step


class Regularizer:
    """No regularisation: the standard teacher (plain splatfacto)."""

    def render_opacities(self, opacities: torch.Tensor, step: int, run_length: int) -> torch.Tensor:
        """Opacities ``[N]`` to render with at a training step."""
        return opacities

    def observe(self, info: dict, step: int, run_length: int) -> None:
        """See the rasteriser's ``info`` after the backward pass (gradient statistics)."""

    def after_step(self, params: torch.nn.ParameterDict, optimizers: dict, step: int, run_length: int) -> int:
        """Change parameters after the optimizer step; returns how many Gaussians were changed."""
        return 0


# ------------------------------------------------------------------------------------------------- perturbation


def quaternion_to_matrix(quats: torch.Tensor) -> torch.Tensor:
    """Unit (wxyz) quaternions ``[N, 4]`` to rotation matrices ``[N, 3, 3]``."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(-1, 3, 3)  # fmt: skip


def matrix_to_rotation_6d(matrices: torch.Tensor) -> torch.Tensor:
    """The continuous 6-D rotation representation (Zhou et al. 2019): the first two rows of the matrix."""
    return matrices[:, :2, :].reshape(-1, 6)


def rotation_6d_to_matrix(six: torch.Tensor) -> torch.Tensor:
    """Gram-Schmidt back to a rotation matrix; any 6-vector with independent halves gives a valid rotation."""
    a1, a2 = six[:, :3], six[:, 3:]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-2)


def matrix_to_quaternion(matrices: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[N, 3, 3]`` to unit wxyz quaternions with w >= 0 (numerically stable branch choice)."""
    m = matrices
    trace = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    candidates = torch.stack(
        [
            torch.stack([1 + trace, m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], -1),
            torch.stack([m[:, 2, 1] - m[:, 1, 2], 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2],
                         m[:, 0, 1] + m[:, 1, 0], m[:, 0, 2] + m[:, 2, 0]], -1),
            torch.stack([m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0],
                         1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2], m[:, 1, 2] + m[:, 2, 1]], -1),
            torch.stack([m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0],
                         m[:, 1, 2] + m[:, 2, 1], 1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], -1),
        ],
        dim=1,
    )  # fmt: skip
    # each candidate is 4*q*q_k for a different k; pick the one with the largest |q_k| (its diagonal entry)
    best = torch.stack([candidates[:, k, k] for k in range(4)], dim=-1).argmax(dim=-1)
    quats = torch.nn.functional.normalize(candidates[torch.arange(m.shape[0]), best], dim=-1)
    return torch.where(quats[:, :1] < 0, -quats, quats)


@dataclass
class PerturbationConfig:
    """Random parameter perturbation (the "perturbed" teacher)."""

    window: RunWindow = field(default_factory=RunWindow)
    """When to perturb: every 1000 steps strictly between 15k and 25k of a 30k run (fractions of the run)."""
    ratio: float = 0.1
    """Noise std as a fraction of each component's mean absolute value (clamped below by min_scale)."""
    min_scale: float = 1.0
    """Lower clamp of that mean absolute value, so small-valued parameters still get noise."""
    grad_threshold: float = 0.0002
    """Perturb Gaussians whose mean view-space gradient norm since the last event is at least this (3DGS's densify
    threshold; our CPU and CUDA paths report it identically)."""
    percent_dense: float = 0.01
    """...and whose largest scale is at most this fraction of the scene extent (3DGS's percent_dense)."""
    reset_optimizer_state: bool = True
    """Zero the Adam moments of perturbed Gaussians so the jump is not undone by stale momentum."""


class ParameterPerturbation(Regularizer):
    """Adds Gaussian noise to the raw means, opacity logits, log-scales and rotations (in 6-D space) of the Gaussians
    that are still under-fitted (large view-space gradient) and small, at scheduled steps."""

    def __init__(self, config: PerturbationConfig, scene_extent: float, generator: torch.Generator | None = None):
        self.config = config
        self.scene_extent = scene_extent
        self.generator = generator
        self._grad_sum: torch.Tensor | None = None
        self._grad_count: torch.Tensor | None = None

    def observe(self, info: dict, step: int, run_length: int) -> None:
        """Accumulate each Gaussian's view-space gradient norm since the last event, in the NDC units 3DGS's
        threshold is written in (the same rescaling gsplat's DefaultStrategy applies)."""
        means2d = info.get("means2d")
        if means2d is None or means2d.grad is None:
            return
        grad = means2d.grad.detach().clone()  # [C, N, 2], d loss / d pixel position
        grad[..., 0] *= info["width"] / 2.0 * info["n_cameras"]
        grad[..., 1] *= info["height"] / 2.0 * info["n_cameras"]
        norms = grad.norm(dim=-1)
        visible = info["radii"] > 0
        num = norms.shape[1]
        if self._grad_sum is None or self._grad_sum.shape[0] != num:  # first use, or densification changed N
            self._grad_sum = torch.zeros(num, device=norms.device)
            self._grad_count = torch.zeros(num, device=norms.device)
        self._grad_sum += (norms * visible).sum(dim=0)
        self._grad_count += visible.sum(dim=0)

    def selection(self, params: torch.nn.ParameterDict) -> torch.Tensor:
        """Which Gaussians the next event perturbs (bool ``[N]``)."""
        num = params["means"].shape[0]
        if self._grad_sum is None or self._grad_sum.shape[0] != num:
            return torch.zeros(num, dtype=torch.bool, device=params["means"].device)
        mean_grad = self._grad_sum / self._grad_count.clamp_min(1)
        small = torch.exp(params["scales"]).amax(dim=-1) <= self.config.percent_dense * self.scene_extent
        return (mean_grad >= self.config.grad_threshold) & small

    def _noise(self, values: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
        scale = values.abs().mean(dim=0, keepdim=True).clamp_min(self.config.min_scale)
        noise = torch.randn(values.shape, generator=self.generator, device="cpu").to(values.device)
        return noise * self.config.ratio * scale * selected.view(-1, *([1] * (values.dim() - 1)))

    @torch.no_grad()
    def after_step(self, params: torch.nn.ParameterDict, optimizers: dict, step: int, run_length: int) -> int:
        if not self.config.window.fires(step, run_length):
            return 0
        selected = self.selection(params)
        count = int(selected.sum())
        if count:
            for name in ("means", "opacities", "scales"):
                params[name].add_(self._noise(params[name], selected))
            six = matrix_to_rotation_6d(quaternion_to_matrix(params["quats"]))
            rotated = matrix_to_quaternion(rotation_6d_to_matrix(six + self._noise(six, selected)))
            params["quats"][selected] = rotated[selected].to(params["quats"].dtype)
            if self.config.reset_optimizer_state:
                for name in ("means", "opacities", "scales", "quats"):
                    state = optimizers[name].state.get(params[name], {}) if name in optimizers else {}
                    for key in ("exp_avg", "exp_avg_sq"):
                        if key in state:
                            state[key][selected] = 0.0
        self._grad_sum = None
        self._grad_count = None
        return count


# ------------------------------------------------------------------------------------------------------ dropout


@dataclass
class DropoutConfig:
    """Gaussian dropout (the "dropout" teacher, DropGaussian-style inverted dropout on opacities)."""

    window: RunWindow = field(default_factory=RunWindow)
    """Steps whose render drops Gaussians: every 1000 steps strictly between 15k and 25k of a 30k run, as the
    official code has it. Set ``every`` to one step's fraction (e.g. 1e-9) to drop at every step of the window."""
    rate: float = 0.2
    """Drop rate reached at ``ramp_end``; it grows linearly from 0 at ``ramp_start`` (and keeps growing after)."""
    ramp_start: float = paper_fraction(500)
    """Where the rate ramp starts, as a fraction of the run."""
    ramp_end: float = paper_fraction(15_000)
    """Where the rate equals ``rate``, as a fraction of the run."""
    max_rate: float = 0.9
    """Upper clamp of the rate (the official formula reaches 0.32 at 24k; this only guards odd settings)."""


class GaussianDropout(Regularizer):
    """Zeroes a random subset of opacities in scheduled training renders and scales the rest by 1/(1-p)."""

    def __init__(self, config: DropoutConfig, generator: torch.Generator | None = None):
        self.config = config
        self.generator = generator

    def rate(self, step: int, run_length: int) -> float:
        """Drop probability at ``step``."""
        start, end = to_step(self.config.ramp_start, run_length), to_step(self.config.ramp_end, run_length)
        ramp = (step - start) / max(end - start, 1)
        return min(max(self.config.rate * ramp, 0.0), self.config.max_rate)

    def render_opacities(self, opacities: torch.Tensor, step: int, run_length: int) -> torch.Tensor:
        if not self.config.window.fires(step, run_length):
            return opacities
        p = self.rate(step, run_length)
        if p <= 0.0:
            return opacities
        keep = torch.rand(opacities.shape, generator=self.generator, device="cpu").to(opacities.device) >= p
        return opacities * keep / (1.0 - p)
