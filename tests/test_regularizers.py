"""Schedules and the two teacher regularisers: they act when, and only when, scheduled."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from distilled3dgs_ns.regularizers import (
    DropoutConfig,
    GaussianDropout,
    ParameterPerturbation,
    PerturbationConfig,
    matrix_to_quaternion,
    matrix_to_rotation_6d,
    quaternion_to_matrix,
    rotation_6d_to_matrix,
)
from distilled3dgs_ns.schedules import RunWindow, run_length_of


def test_default_window_is_the_papers_schedule():
    # official code: iteration > 15000 and iteration % 1000 == 0 and iteration < 25000
    assert RunWindow().steps(30_000) == list(range(16_000, 25_000, 1_000))


def test_window_scales_with_run_length():
    assert RunWindow().steps(3_000) == list(range(1_600, 2_500, 100))
    assert RunWindow().steps(30) == list(range(16, 25))


def test_run_length_of_a_resumed_trainer():
    fresh = SimpleNamespace(_start_step=0, config=SimpleNamespace(max_num_iterations=3000))
    resumed = SimpleNamespace(_start_step=2000, config=SimpleNamespace(max_num_iterations=1000))
    assert run_length_of(fresh) == 3000 and run_length_of(resumed) == 3000


@pytest.mark.parametrize("kwargs", [dict(start=0.6, stop=0.5), dict(start=-0.1), dict(stop=1.5), dict(every=0.0)])
def test_window_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        RunWindow(**kwargs)


def test_rotation_6d_round_trip():
    quats = torch.nn.functional.normalize(torch.randn(500, 4, dtype=torch.float64), dim=-1)
    back = matrix_to_quaternion(rotation_6d_to_matrix(matrix_to_rotation_6d(quaternion_to_matrix(quats))))
    # q and -q are the same rotation
    assert torch.allclose(back.abs(), quats.abs(), atol=1e-9)
    assert torch.allclose((back * quats).sum(-1).abs(), torch.ones(500, dtype=torch.float64), atol=1e-9)


def _gaussians(num: int = 64) -> torch.nn.ParameterDict:
    torch.manual_seed(0)
    return torch.nn.ParameterDict(
        {
            "means": torch.nn.Parameter(torch.randn(num, 3) * 0.3),
            "scales": torch.nn.Parameter(torch.full((num, 3), math.log(0.005))),
            "quats": torch.nn.Parameter(torch.nn.functional.normalize(torch.randn(num, 4), dim=-1)),
            "opacities": torch.nn.Parameter(torch.zeros(num, 1)),
        }
    )


def _info_with_gradient(grad_per_gaussian: torch.Tensor, width: int = 100, height: int = 100) -> dict:
    means2d = torch.zeros(1, grad_per_gaussian.shape[0], 2)
    means2d.grad = torch.stack([grad_per_gaussian, torch.zeros_like(grad_per_gaussian)], dim=-1)[None]
    radii = torch.ones(1, grad_per_gaussian.shape[0], dtype=torch.int32)
    return {"means2d": means2d, "radii": radii, "width": width, "height": height, "n_cameras": 1}


def _perturbation_setup(num: int = 64):
    params = _gaussians(num)
    with torch.no_grad():  # the second half is too large to be perturbed
        params["scales"][num // 2 :] = math.log(0.5)
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    for p in params.values():  # give every parameter some Adam state
        p.grad = torch.ones_like(p)
    for opt in optimizers.values():
        opt.step()
    reg = ParameterPerturbation(PerturbationConfig(), scene_extent=1.0, generator=torch.Generator().manual_seed(1))
    # the first 3/4 have a large view-space gradient (in NDC units: 0.001 > 0.0002 after * width / 2)
    grads = torch.zeros(num)
    grads[: 3 * num // 4] = 0.001 * 2 / 100
    return params, optimizers, reg, grads


def test_perturbation_changes_only_selected_gaussians_at_scheduled_steps():
    num = 64
    params, optimizers, reg, grads = _perturbation_setup(num)
    before = {k: v.detach().clone() for k, v in params.items()}
    reg.observe(_info_with_gradient(grads), step=15_999, run_length=30_000)
    assert reg.after_step(params, optimizers, step=15_999, run_length=30_000) == 0  # not scheduled
    for k in params:
        assert torch.equal(params[k], before[k])

    reg.observe(_info_with_gradient(grads), step=16_000, run_length=30_000)
    changed = reg.after_step(params, optimizers, step=16_000, run_length=30_000)
    expected = torch.zeros(num, dtype=torch.bool)
    expected[: num // 2] = True  # large gradient AND small scale
    assert changed == int(expected.sum())
    for k in params:
        moved = (params[k] - before[k]).abs().flatten(1).amax(dim=1) > 0
        assert torch.equal(moved, expected), k
    # noise magnitude follows ratio * clamp(mean|p|, 1): std ~0.1 for means
    delta = (params["means"] - before["means"])[expected]
    assert 0.05 < delta.std().item() < 0.2
    assert torch.allclose(params["quats"][expected].norm(dim=-1), torch.ones(int(expected.sum())), atol=1e-5)
    for k in ("means", "quats"):
        state = optimizers[k].state[params[k]]
        assert torch.all(state["exp_avg"][expected] == 0) and torch.all(state["exp_avg"][~expected] != 0)


def test_perturbation_statistics_restart_after_each_event():
    params, optimizers, reg, grads = _perturbation_setup()
    reg.observe(_info_with_gradient(grads), step=16_000, run_length=30_000)
    reg.after_step(params, optimizers, step=16_000, run_length=30_000)
    # no new gradient seen since: the next event perturbs nothing
    assert reg.after_step(params, optimizers, step=17_000, run_length=30_000) == 0


def test_perturbation_in_short_runs():
    params, optimizers, reg, grads = _perturbation_setup()
    reg.observe(_info_with_gradient(grads), step=1_600, run_length=3_000)
    assert reg.after_step(params, optimizers, step=1_600, run_length=3_000) > 0


def test_dropout_only_on_scheduled_steps():
    reg = GaussianDropout(DropoutConfig(), generator=torch.Generator().manual_seed(0))
    opacities = torch.rand(20_000) * 0.5 + 0.25
    for step in (15_000, 16_500, 25_000, 26_000):
        assert torch.equal(reg.render_opacities(opacities, step, 30_000), opacities)
    step = 16_000
    p = reg.rate(step, 30_000)
    assert p == pytest.approx(0.2 * (16_000 - 500) / 14_500)
    dropped = reg.render_opacities(opacities, step, 30_000)
    zero = dropped == 0
    assert zero.float().mean().item() == pytest.approx(p, abs=0.015)
    assert torch.allclose(dropped[~zero], opacities[~zero] / (1 - p))
    # inverted dropout keeps the expected opacity
    assert dropped.mean().item() == pytest.approx(opacities.mean().item(), rel=0.03)


def test_dropout_rate_schedule_scales_with_run():
    reg = GaussianDropout(DropoutConfig())
    assert reg.rate(1_500, 3_000) == pytest.approx(0.2)
    assert reg.rate(50, 3_000) == 0.0
    assert reg.rate(2_400, 3_000) == pytest.approx(0.2 * 2_350 / 1_450)
