"""The teacher model: splatfacto plus one of Distilled-3DGS's regularisers, chosen by ``variant``."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from distilled3dgs_ns.names import TeacherVariant
from distilled3dgs_ns.portable_splatfacto import PortableSplatfactoModel, PortableSplatfactoModelConfig
from distilled3dgs_ns.regularizers import (
    DropoutConfig,
    GaussianDropout,
    ParameterPerturbation,
    PerturbationConfig,
    Regularizer,
)


@dataclass
class TeacherModelConfig(PortableSplatfactoModelConfig):
    """A Distilled-3DGS teacher. Schedules are fractions of ``--max-num-iterations``, so short runs still exercise
    the variant (the paper's 15k-25k window of a 30k run becomes 1.5k-2.5k of a 3k run)."""

    _target: type = field(default_factory=lambda: TeacherModel)
    variant: TeacherVariant = "standard"
    """standard: plain splatfacto; perturbed: random parameter perturbation; dropout: Gaussian dropout."""
    perturbation: PerturbationConfig = field(default_factory=PerturbationConfig)
    """Settings of the perturbed variant (ignored by the others)."""
    dropout: DropoutConfig = field(default_factory=DropoutConfig)
    """Settings of the dropout variant (ignored by the others)."""
    regularizer_seed: int = 0
    """Seed of the regulariser's random numbers (perturbation noise, dropout masks)."""


class TeacherModel(PortableSplatfactoModel):
    """Splatfacto with a regulariser hooked into the render (dropout) and after the optimizer step (perturbation)."""

    config: TeacherModelConfig

    def populate_modules(self) -> None:
        super().populate_modules()
        self.regularizer = self._make_regularizer()

    def _make_regularizer(self) -> Regularizer:
        generator = torch.Generator().manual_seed(self.config.regularizer_seed)
        factories = {
            "standard": Regularizer,
            # nerfstudio normalises poses into [-1, 1], which is why splatfacto uses a scene scale of 1 too
            "perturbed": lambda: ParameterPerturbation(self.config.perturbation, scene_extent=1.0, generator=generator),
            "dropout": lambda: GaussianDropout(self.config.dropout, generator=generator),
        }
        if self.config.variant not in factories:
            raise ValueError(f"unknown teacher variant {self.config.variant!r}; choose one of {sorted(factories)}")
        return factories[self.config.variant]()

    def _render_opacities(self, opacities: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return opacities
        return self.regularizer.render_opacities(opacities, self.step, self.run_length)

    def step_post_backward(self, step: int) -> None:
        """Let the regulariser see this step's gradients and act, then densify as splatfacto does."""
        self.regularizer.observe(self.info, step, self.run_length)
        changed = self.regularizer.after_step(self.gauss_params, self.optimizers, step, self.run_length)
        if changed:
            # nerfstudio 1.1.5's writer cannot be imported before its configs (a circular import), so not at the top
            from nerfstudio.utils import writer

            writer.put_scalar(name="teacher/perturbed_gaussians", scalar=changed, step=step)
        super().step_post_backward(step)
