"""Tests for importance scores, keep-mask selections and optimizer-consistent pruning."""

from __future__ import annotations

import pytest
import torch

from distilled3dgs_ns.pruning import (
    accumulated_blending_weight,
    global_significance,
    lowest_share_mask,
    mass_cut,
    prune_gaussians,
    sample_by_importance,
)


def _composite(colors: torch.Tensor, alphas: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Tiny front-to-back alpha compositor: ``alphas`` [N, H, W] per Gaussian, ``order`` front to back."""
    transmittance = torch.ones(alphas.shape[1:], dtype=alphas.dtype)
    image = torch.zeros_like(transmittance)
    for i in order.tolist():
        image = image + colors[i, 0] * alphas[i] * transmittance
        transmittance = transmittance * (1 - alphas[i])
    return image + 0.3 * transmittance  # grey background


def test_accumulated_blending_weight_matches_closed_form() -> None:
    generator = torch.Generator().manual_seed(0)
    n, views = 6, []
    for _ in range(3):
        alphas = torch.rand(n, 4, 5, generator=generator, dtype=torch.float64) * 0.9
        alphas[torch.rand(n, 4, 5, generator=generator) < 0.3] = 0.0  # footprints
        views.append((alphas, torch.randperm(n, generator=generator)))
    alphas_unseen = torch.zeros(n, 4, 5, dtype=torch.float64)
    alphas_unseen[2] = 0.5  # only Gaussian 2 visible
    views.append((alphas_unseen, torch.arange(n)))

    expected = torch.zeros(n, dtype=torch.float64)
    for alphas, order in views:
        for y in range(4):
            for x in range(5):
                transmittance = 1.0
                for i in order.tolist():
                    expected[i] += float(alphas[i, y, x]) * transmittance
                    transmittance *= 1.0 - float(alphas[i, y, x])

    done: list[int] = []
    importance = accumulated_blending_weight(
        lambda colors, view: _composite(colors.double(), *view), n, views, progress=done.append
    )
    torch.testing.assert_close(importance.double(), expected, rtol=1e-5, atol=1e-6)
    assert not importance.requires_grad
    assert done == [1, 2, 3, 4]


def test_accumulated_blending_weight_tolerates_constant_render() -> None:
    importance = accumulated_blending_weight(lambda colors, view: torch.zeros(2, 2), 3, [None, None])
    assert torch.equal(importance, torch.zeros(3))


def test_global_significance_hand_example() -> None:
    # Volumes 1, 8, 27, 64, 0.125; 90th percentile (linear) = 27 + 0.6 * (64 - 27) = 49.2.
    scales = torch.tensor([[1.0, 1, 1], [2, 2, 2], [3, 3, 3], [4, 4, 4], [0.5, 0.5, 0.5]], dtype=torch.float64)
    hits = torch.tensor([10, 20, 0, 5, 100])
    opacities = torch.tensor([[0.5], [1.0], [0.9], [0.2], [0.8]], dtype=torch.float64)
    reference = 27 + 0.6 * (64 - 27)
    volume_norm = torch.tensor([1 / reference, 8 / reference, 27 / reference, 1.0, 0.125 / reference])  # 64 clipped
    expected = hits.double() * opacities.view(-1) * volume_norm.double() ** 0.1
    got = global_significance(hits, opacities, scales, beta=0.1, volume_percentile=0.9)
    torch.testing.assert_close(got, expected)
    assert got[2] == 0  # never hit
    # beta = 0 ignores volume; percentile 0 normalises by the smallest volume, so everything clips to 1.
    torch.testing.assert_close(global_significance(hits, opacities, scales, beta=0.0), hits * opacities.view(-1))
    torch.testing.assert_close(
        global_significance(hits, opacities, scales, beta=1.0, volume_percentile=0.0), hits * opacities.view(-1)
    )


def test_sample_by_importance_count_and_support() -> None:
    importance = torch.tensor([0.0, 1.0, 2.0, 0.0, 5.0, 0.5, 3.0, 0.0, 1.0, 4.0])  # 7 positive
    generator = torch.Generator().manual_seed(0)
    for factor, count in ((0.5, 4), (0.9, 6), (1.0, 7), (2.0, 7), (0.0, 0)):  # round(3.5) = 4 (banker's)
        keep = sample_by_importance(importance, factor, generator=generator)
        assert keep.dtype == torch.bool and int(keep.sum()) == count
        assert not keep[importance == 0].any()


def test_sample_by_importance_prefers_important() -> None:
    importance = torch.arange(1, 21, dtype=torch.float32)
    generator = torch.Generator().manual_seed(1234)
    frequency = torch.stack([sample_by_importance(importance, 0.25, generator=generator) for _ in range(200)]).float()
    inclusion = frequency.mean(0)
    correlation = torch.corrcoef(torch.stack([inclusion, importance]))[0, 1]
    assert correlation > 0.9
    assert inclusion[-5:].mean() > 2 * inclusion[:5].mean()


def test_sample_by_importance_first_draw_law() -> None:
    # A single draw must be proportional to the weights: P = w / sum(w).
    importance = torch.tensor([1.0, 3.0, 6.0])
    generator = torch.Generator().manual_seed(7)
    counts = torch.stack([sample_by_importance(importance, 1 / 3, generator=generator) for _ in range(2000)]).sum(0)
    torch.testing.assert_close(counts / 2000, importance / importance.sum(), atol=0.04, rtol=0)


def test_mass_cut_keeps_minimal_prefix() -> None:
    generator = torch.Generator().manual_seed(3)
    importance = torch.rand(1000, generator=generator) ** 4
    importance[::7] = 0.0
    keep = mass_cut(importance, 0.99)
    total = importance.double().sum()
    kept = importance.double()[keep]
    assert kept.sum() >= 0.99 * total
    assert kept.sum() - kept.min() < 0.99 * total  # dropping any (the smallest) kept one falls below
    assert importance[keep].min() >= importance[~keep].max()  # the most important are kept
    assert not keep[importance == 0].any()
    assert int(mass_cut(importance, 1.0).sum()) == int((importance > 0).sum())
    assert not mass_cut(torch.zeros(5)).any()


def test_mass_cut_ties_are_deterministic() -> None:
    keep = mass_cut(torch.ones(10), 0.5)
    assert keep.tolist() == [True] * 5 + [False] * 5


def test_lowest_share_mask() -> None:
    scores = torch.tensor([5.0, 1.0, 3.0, 1.0, 9.0, 0.0])
    assert lowest_share_mask(scores, 0.5).tolist() == [True, False, True, False, True, False]
    assert lowest_share_mask(scores, 0.0).all()
    assert not lowest_share_mask(scores, 1.0).any()


def _model(n: int) -> tuple[torch.nn.ParameterDict, dict[str, torch.optim.Optimizer]]:
    generator = torch.Generator().manual_seed(0)
    params = torch.nn.ParameterDict(
        {
            "means": torch.nn.Parameter(torch.randn(n, 3, generator=generator)),
            "opacities": torch.nn.Parameter(torch.randn(n, 1, generator=generator)),
            "features_rest": torch.nn.Parameter(torch.randn(n, 15, 3, generator=generator)),
        }
    )
    optimizers = {name: torch.optim.Adam([param], lr=1e-3) for name, param in params.items()}
    return params, optimizers


def test_prune_gaussians_keeps_optimizer_and_state_consistent() -> None:
    n = 12
    params, optimizers = _model(n)
    for _ in range(2):  # populate Adam state
        loss = sum((p**2).sum() for p in params.values())
        loss.backward()
        for optimizer in optimizers.values():
            optimizer.step()
            optimizer.zero_grad()
    before = {
        name: {key: value.clone() for key, value in optimizers[name].state[param].items()}
        for name, param in params.items()
    }
    values_before = {name: param.detach().clone() for name, param in params.items()}
    state = {
        "grad2d": torch.arange(n, dtype=torch.float32),
        "radii": torch.rand(n, 1),
        "count": None,
        "scene_scale": 1.5,
        "step_tensor": torch.tensor(3.0),
        "camera_table": torch.rand(4, 3),
    }
    camera_table = state["camera_table"]
    keep = torch.zeros(n, dtype=torch.bool)
    keep[[0, 3, 4, 9, 11]] = True

    prune_gaussians(params, optimizers, state, keep)

    for name, param in params.items():
        assert param.shape[0] == 5
        torch.testing.assert_close(param.detach(), values_before[name][keep])
        group_params = optimizers[name].param_groups[0]["params"]
        assert len(group_params) == 1 and group_params[0] is param
        adam = optimizers[name].state[param]
        for key in ("exp_avg", "exp_avg_sq"):
            assert adam[key].shape == param.shape
            torch.testing.assert_close(adam[key], before[name][key][keep])
        torch.testing.assert_close(adam["step"], before[name]["step"])
        assert len(optimizers[name].state) == 1  # the old parameter's state is gone
    assert state["grad2d"].tolist() == [0.0, 3.0, 4.0, 9.0, 11.0]
    assert state["radii"].shape == (5, 1)
    assert state["count"] is None and state["scene_scale"] == 1.5 and state["step_tensor"].item() == 3.0
    assert state["camera_table"] is camera_table

    loss = sum((p**2).sum() for p in params.values())
    loss.backward()
    for optimizer in optimizers.values():
        optimizer.step()
    assert all(torch.isfinite(p).all() for p in params.values())


def test_prune_gaussians_validates_inputs() -> None:
    params, optimizers = _model(4)
    with pytest.raises(ValueError, match="bool"):
        prune_gaussians(params, optimizers, {}, torch.ones(4))
    with pytest.raises(ValueError, match="shape"):
        prune_gaussians(params, optimizers, {}, torch.ones(5, dtype=torch.bool))
    del optimizers["means"]
    with pytest.raises(ValueError, match="means"):
        prune_gaussians(params, optimizers, {}, torch.ones(4, dtype=torch.bool))
