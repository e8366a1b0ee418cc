"""Tests for importance scores (blending weight, hit counts, global significance), keep-mask selections and
optimizer-consistent pruning."""

from __future__ import annotations

import math
from typing import get_args

import pytest
import torch
from helpers import look_at_camera, make_model
from nerfstudio.cameras.cameras import Cameras
from raster_reference import reference_hit_counts
from test_rasterization import look_at, make_scene

from distilled3dgs_ns.portable_splatfacto import PortableSplatfactoModelConfig
from distilled3dgs_ns.pruning import (
    PRUNE_SCORES,
    DensifyBudget,
    PruneEvent,
    PruneSchedule,
    PruneScore,
    accumulated_blending_weight,
    global_significance,
    lowest_share_mask,
    mass_cut,
    prune_gaussians,
    restart_adam,
    sample_by_importance,
    staged_count_events,
    top_contribution_score,
    top_count_mask,
)
from distilled3dgs_ns.rasterization import composite, hit_counts, top_contributions
from distilled3dgs_ns.significance import significance_scores
from distilled3dgs_ns.strategy import CappedStrategy

F64 = torch.float64
GEOMETRY = ("means", "quats", "scales", "opacities", "viewmats", "Ks", "width", "height")


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


def test_top_contribution_score_ranks_by_won_pixels_then_by_weight() -> None:
    tops = torch.tensor([3, 0, 3, 1, 0])
    weights = torch.tensor([1.0, 5.0, 2.0, 0.5, 0.0])
    score = top_contribution_score(tops, weights)
    assert score.argsort(descending=True).tolist() == [2, 0, 3, 1, 4]  # a tie in pixels goes to the heavier one
    assert ((score - tops) < 1).all() and ((score - tops) >= 0).all()  # the weight never outranks a won pixel
    assert top_count_mask(score, 2).tolist() == [True, False, True, False, False]


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


# ------------------------------------------------------------------------------------------------- hit counts


def _counts(scene: dict, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """(ours, reference) hit counts of a float64 scene."""
    args = [scene[k] for k in GEOMETRY]
    return hit_counts(*args, **kwargs), reference_hit_counts(*args, **kwargs)


@pytest.mark.parametrize(("seed", "rasterize_mode", "tiny_slabs"), [(0, "classic", False), (1, "antialiased", True)])
def test_hit_counts_match_reference(
    seed: int, rasterize_mode: str, tiny_slabs: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if tiny_slabs:  # slabs of 4-5 Gaussians: transmittance carried between slabs and groups
        monkeypatch.setattr(composite, "SLAB_ELEMS", 512)
        monkeypatch.setattr(composite, "MIN_BATCH", 4)
        monkeypatch.setattr(composite, "MAX_BATCH", 5)
    scene = make_scene(n=14, n_cams=2, width=23, height=17, seed=seed)  # edge tiles half outside the image
    ours, reference = _counts(scene, rasterize_mode=rasterize_mode)
    assert ours.dtype == torch.int64 and ours.shape == (2, 14)
    assert torch.equal(ours, reference)
    assert (reference > 0).sum() > 10, "scene hits nothing: the test would be vacuous"
    as_float32 = [scene[k].float() if torch.is_tensor(scene[k]) else scene[k] for k in GEOMETRY]
    assert torch.equal(hit_counts(*as_float32, rasterize_mode=rasterize_mode), reference)


@pytest.mark.parametrize(("seed", "rasterize_mode", "tiny_slabs"), [(2, "classic", False), (3, "antialiased", True)])
def test_top_contributor_counts_match_reference(
    seed: int, rasterize_mode: str, tiny_slabs: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if tiny_slabs:  # the running maximum carried between slabs and groups
        monkeypatch.setattr(composite, "SLAB_ELEMS", 512)
        monkeypatch.setattr(composite, "MIN_BATCH", 4)
        monkeypatch.setattr(composite, "MAX_BATCH", 5)
    scene = make_scene(n=14, n_cams=2, width=23, height=17, seed=seed)
    ours, reference = _counts(scene, rasterize_mode=rasterize_mode, top_contributor=True)
    assert ours.dtype == torch.int64 and ours.shape == (2, 14)
    assert torch.equal(ours, reference)
    hits, _ = _counts(scene, rasterize_mode=rasterize_mode)
    assert (ours <= hits).all() and (hits > ours).any(), "a top contributor is composited; some composited are not"
    assert (reference > 0).sum() > 6, "scene has few winners: the test would be vacuous"
    # Every covered pixel has exactly one winner.
    covered = hits.sum(dim=1) > 0
    assert (ours.sum(dim=1)[covered] <= 23 * 17).all()


@pytest.mark.parametrize(("seed", "rasterize_mode", "tiny_slabs"), [(4, "classic", False), (5, "antialiased", True)])
def test_top_contributions_give_the_counts_and_the_summed_blending_weights(
    seed: int, rasterize_mode: str, tiny_slabs: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if tiny_slabs:  # weights summed across slabs and groups
        monkeypatch.setattr(composite, "SLAB_ELEMS", 512)
        monkeypatch.setattr(composite, "MIN_BATCH", 4)
        monkeypatch.setattr(composite, "MAX_BATCH", 5)
    scene = make_scene(n=14, n_cams=2, width=23, height=17, seed=seed)  # edge tiles half outside the image
    args = [scene[k] for k in GEOMETRY]
    tops, weights = top_contributions(*args, rasterize_mode=rasterize_mode)
    assert torch.equal(tops, reference_hit_counts(*args, rasterize_mode=rasterize_mode, top_contributor=True))
    expected = reference_hit_counts(*args, rasterize_mode=rasterize_mode, weights=True)
    assert (expected > 0.5).sum() > 6, "scene has little weight: the test would be vacuous"
    torch.testing.assert_close(weights, expected, rtol=1e-9, atol=1e-12)


def test_top_contributor_is_the_largest_weight_not_the_front() -> None:
    # A faint Gaussian in front of an opaque one: the opaque one wins where both overlap, the faint one elsewhere.
    faint = ([0.0, 0.0, 2.0], [0.5, 0.5, 0.5], 0.05)
    opaque_small = ([0.0, 0.0, 3.0], [0.05, 0.05, 0.05], 0.95)
    ours, reference = _counts(_layered_scene([faint, opaque_small]), top_contributor=True)
    assert torch.equal(ours, reference)
    hits, _ = _counts(_layered_scene([faint, opaque_small]))
    assert 0 < ours[0, 1] < hits[0, 1] and ours[0, 0] == hits[0, 0] - ours[0, 1]


def _layered_scene(layers: list[tuple[list[float], list[float], float]], width: int = 21, height: int = 13) -> dict:
    """One camera at the origin looking down +z; ``layers`` are (mean, scales, opacity) of axis-aligned Gaussians."""
    focal = 30.0
    K = torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]], dtype=F64)
    return {
        "means": torch.tensor([mean for mean, _, _ in layers], dtype=F64),
        "quats": torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=F64).repeat(len(layers), 1),
        "scales": torch.tensor([scales for _, scales, _ in layers], dtype=F64),
        "opacities": torch.tensor([opacity for _, _, opacity in layers], dtype=F64),
        "viewmats": look_at([0.0, 0.0, 0.0], [0.0, 0.0, 1.0])[None],
        "Ks": K[None],
        "width": width,
        "height": height,
    }


WALL = ([20.0, 20.0, 0.01], 0.9999)  # a disk facing the camera, wider than the view: alpha 0.999 everywhere


def test_hit_counts_stop_behind_opaque_layers() -> None:
    hidden = ([0.05, 0.0, 4.0], [0.2, 0.2, 0.2], 0.95)
    ours, reference = _counts(_layered_scene([([0.0, 0.0, 2.0], *WALL), ([0.0, 0.0, 2.5], *WALL), hidden]))
    assert torch.equal(ours, reference)
    # The first wall is hit at every pixel and leaves T = 1e-3; the second would bring T below 1e-4, so every pixel
    # stops there: neither it nor anything behind takes part.
    assert ours[0].tolist() == [21 * 13, 0, 0]
    # Behind one wall only, the hidden Gaussian's core still stops the pixels, but its faint tails are composited.
    ours, reference = _counts(_layered_scene([([0.0, 0.0, 2.0], *WALL), hidden]))
    assert torch.equal(ours, reference)
    assert ours[0, 0] == 21 * 13 and 0 < ours[0, 1] < 21 * 13


def test_hit_counts_threshold_at_1_over_255() -> None:
    scene = _layered_scene(
        [
            ([0.0, 0.0, 3.0], [0.15] * 3, 0.99 / 255),  # never reaches alpha 1/255, even at its centre
            ([0.3, 0.1, 3.0], [0.15] * 3, 2.0 / 255),  # only where exp(-sigma) >= 1/2
            ([-0.3, 0.0, 3.0], [0.15] * 3, 0.8),
        ]
    )
    ours, reference = _counts(scene)
    assert torch.equal(ours, reference)
    faint, strong = ours[0, 1].item(), ours[0, 2].item()
    assert ours[0, 0] == 0 and 0 < faint < strong
    # 2-D std ~ 0.15 * 30 / 3 = 1.5 px (plus the 0.3 px^2 blur): exp(-sigma) >= 1/2 within ~1.9 px of the centre
    assert faint <= math.pi * (1.5**2 + 0.3) * 2 * math.log(2) + 8


def test_significance_ranks_large_opaque_above_hidden_and_faint() -> None:
    model = make_model(PortableSplatfactoModelConfig(num_downscales=0, background_color="black"), num_points=5)
    camera = look_at_camera((3.0, 0.0, 0.0), size=24)  # looks down -x: larger x is nearer
    layout = {  # name: (mean, scales, opacity)
        "wall": ([1.0, 0.0, 0.0], [0.01, 20.0, 20.0], 0.9999),
        "second wall": ([0.5, 0.0, 0.0], [0.01, 20.0, 20.0], 0.9999),
        "hidden": ([-0.5, 0.0, 0.0], [0.1, 0.1, 0.1], 0.9),
        "faint": ([2.0, 0.0, 0.0], [0.005, 0.005, 0.005], 0.02),
        "small": ([1.5, 0.2, 0.1], [0.05, 0.05, 0.05], 0.9),
    }
    with torch.no_grad():
        model.gauss_params["means"].copy_(torch.tensor([mean for mean, _, _ in layout.values()]))
        model.gauss_params["scales"].copy_(torch.tensor([scales for _, scales, _ in layout.values()]).log())
        model.gauss_params["opacities"].copy_(torch.logit(torch.tensor([[o] for _, _, o in layout.values()])))
        model.gauss_params["quats"].copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(5, 4))
    done: list[int] = []
    scores = dict(zip(layout, significance_scores(model, camera, progress=done.append).tolist(), strict=True))
    assert done == [1]
    assert scores["wall"] > scores["small"] > scores["faint"] > 0
    assert scores["hidden"] == 0 and scores["second wall"] == 0
    assert scores["wall"] == pytest.approx(24 * 24 * 0.9999, rel=1e-4)  # every pixel, volume clipped to 1
    # summed over views; beta = 0 drops the volume discount
    torch.testing.assert_close(significance_scores(model, _repeated(camera, 2)), 2 * significance_scores(model, camera))
    flat = significance_scores(model, camera, beta=0.0)
    assert flat[0].item() == pytest.approx(scores["wall"]) and flat[3].item() > scores["faint"]


def _repeated(camera: Cameras, times: int) -> Cameras:
    """``times`` copies of a one-camera ``Cameras``."""
    return Cameras(
        camera_to_worlds=camera.camera_to_worlds.repeat(times, 1, 1),
        **{k: getattr(camera, k).repeat(times, 1) for k in ("fx", "fy", "cx", "cy", "width", "height")},
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


# ------------------------------------------------------------------------------------------------ prune schedule


def _params_and_adam(n: int) -> tuple[dict, dict]:
    params = {name: torch.nn.Parameter(torch.randn(n, width)) for name, width in (("means", 3), ("opacities", 1))}
    optimizers = {name: torch.optim.Adam([p], lr=0.1) for name, p in params.items()}
    for p in params.values():
        p.grad = torch.ones_like(p)
    for optimizer in optimizers.values():
        optimizer.step()
    return params, optimizers


def test_prune_schedule_resolves_fractions_and_orders_events_on_one_step() -> None:
    schedule = PruneSchedule(
        [PruneEvent("count", 0.5, 3), PruneEvent("mass", 0.5, 0.9), PruneEvent("sample", 0.2, 0.8)], run_length=40
    )
    assert schedule.steps() == [8, 20, 20] and schedule.first_step() == 8
    assert [e.kind for e in schedule.due(20)] == ["mass", "count"] and schedule.due(19) == []
    with pytest.raises(ValueError, match="run fraction in \\[0, 1\\]"):
        PruneSchedule([PruneEvent("share", 1.2, 0.5)])


def test_prune_schedule_applies_due_events_to_params_adam_and_state() -> None:
    params, optimizers = _params_and_adam(10)
    importance = torch.arange(10, dtype=torch.float32)  # Gaussian i scores i
    state = {"grad2d": torch.arange(10.0), "scene_scale": 1.0}
    means = params["means"].detach().clone()
    moments = optimizers["means"].state[params["means"]]["exp_avg"].clone()
    calls = []

    def scores():
        calls.append(len(params["means"]))
        return importance[: len(params["means"])] if len(calls) == 1 else torch.arange(len(params["means"])) + 1.0, None

    schedule = PruneSchedule([PruneEvent("share", 0.5, 0.3), PruneEvent("count", 0.5, 4)], run_length=10)
    assert schedule.step_post_backward(params, optimizers, state, 4, scores) == [] and not calls
    results = schedule.step_post_backward(params, optimizers, state, 5, scores)
    assert [(r.event.kind, r.before, r.after) for r in results] == [("share", 10, 7), ("count", 7, 4)]
    assert calls == [10, 7]  # scores recomputed before each event
    kept = torch.tensor([6, 7, 8, 9])  # share removes 0..2; the count keeps the 4 highest of the 7 left (3..9)
    assert torch.equal(params["means"].detach(), means[kept])
    assert torch.equal(optimizers["means"].state[params["means"]]["exp_avg"], moments[kept])
    assert torch.equal(state["grad2d"], kept.float()) and state["scene_scale"] == 1.0
    assert "kept 4 of 7 Gaussians" in results[1].describe()


def test_top_filter_drops_gaussians_that_never_win_a_pixel() -> None:
    importance = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    tops = torch.tensor([0, 3, 0, 1, 2])
    plain = PruneSchedule([PruneEvent("count", 0.0, 3)])
    filtered = PruneSchedule([PruneEvent("count", 0.0, 3)], top_filter=True)
    assert plain.keep_mask(plain.events[0], importance).tolist() == [True, True, True, False, False]
    assert filtered.keep_mask(filtered.events[0], importance, tops).tolist() == [False, True, False, True, True]
    # a budget above the number of top contributors is filled with the best of the others
    four = PruneSchedule([PruneEvent("count", 0.0, 4)], top_filter=True)
    assert four.keep_mask(four.events[0], importance, tops).tolist() == [True, True, False, True, True]
    mass = PruneSchedule([PruneEvent("mass", 0.0, 0.99)], top_filter=True)
    assert mass.keep_mask(mass.events[0], importance, tops).tolist() == [False, True, False, True, True]
    with pytest.raises(ValueError, match="needs the top-contributor counts"):
        filtered.keep_mask(filtered.events[0], importance)


def test_top_count_mask_keeps_the_highest_and_never_a_zero() -> None:
    scores = torch.tensor([0.5, 2.0, 0.0, 2.0, 1.0])
    assert top_count_mask(scores, 2).tolist() == [False, True, False, True, False]
    assert top_count_mask(scores, 5).tolist() == [True, True, False, True, True]
    assert top_count_mask(scores, 0).sum() == 0


def test_the_schedule_regrows_only_between_count_cuts_that_left_it_below_its_budget():
    schedule = PruneSchedule(staged_count_events(250, 0.1, 0.4, 4), run_length=100)  # cuts at 10, 20, 30, 40
    assert schedule.count_budget() == 250
    assert schedule.regrow_until(5, 100) is None  # before the first cut: the model's own densification
    assert schedule.regrow_until(10, 100) == 40 and schedule.regrow_until(39, 249) == 40
    assert schedule.regrow_until(25, 250) is None and schedule.regrow_until(25, 900) is None  # at or above it
    assert schedule.regrow_until(40, 100) is None and schedule.regrow_until(90, 100) is None  # after the last cut
    other = PruneSchedule([PruneEvent("mass", 0.2, 0.9), PruneEvent("share", 0.3, 0.5)], run_length=100)
    assert other.count_budget() is None and other.regrow_until(25, 1) is None


def test_the_densify_budget_stops_at_the_first_prune_and_regrows_capped_at_the_budget():
    schedule = PruneSchedule(staged_count_events(250, 0.1, 0.4, 4), run_length=100)  # cuts at 10, 20, 30, 40
    budget = DensifyBudget(schedule, stop=10, cap=1000)
    assert budget.limits(5, 100) == (10, 1000) and not budget.regrowing  # before the cuts: the model's own
    assert budget.limits(12, 100) == (40, 250) and budget.regrowing  # below the budget between cuts
    assert budget.limits(13, 260) == (10, 1000) and not budget.regrowing  # at or above it: stopped again
    assert DensifyBudget(schedule, stop=10, cap=200).limits(12, 100) == (40, 200)  # the tighter cap wins
    assert DensifyBudget(schedule, stop=10).limits(12, 100) == (40, 250)
    assert budget.limits(45, 100) == (10, 1000)  # after the last cut: no growth


def test_the_densify_budget_moves_the_capped_strategy():
    schedule = PruneSchedule(staged_count_events(8, 0.0, 0.5, 2), run_length=10)  # cuts at 0 and 5
    strategy = CappedStrategy(refine_stop_iter=3, max_gaussians=50, budget=DensifyBudget(schedule, stop=3, cap=50))
    params, optimizers = _params_and_adam(4)
    state = strategy.initialize_state(scene_scale=1.0)
    means2d = torch.zeros(1, 4, 2, requires_grad=True)
    means2d.grad = torch.zeros_like(means2d)
    info = {"means2d": means2d, "width": 8, "height": 8, "n_cameras": 1, "radii": torch.zeros(1, 4)}
    info["gaussian_ids"] = None
    strategy.step_post_backward(params, optimizers, state, 2, info)  # 4 < 8 between the cuts
    assert (strategy.refine_stop_iter, strategy.max_gaussians) == (5, 8)
    strategy.step_post_backward(params, optimizers, state, 6, info)
    assert (strategy.refine_stop_iter, strategy.max_gaussians) == (3, 50)


class _Measures:
    """Fake training-view measures that record which passes a score asked for."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.tops, self.weights = torch.tensor([0, 3, 1]), torch.tensor([0.5, 0.2, 0.4])

    def blending_importance(self) -> torch.Tensor:
        self.calls.append("backward")
        return self.weights

    def top_contributions_and_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append("forward")
        return self.tops, self.weights

    def significance(self) -> torch.Tensor:
        self.calls.append("significance")
        return torch.tensor([1.0, 2.0, 3.0])


@pytest.mark.parametrize(
    ("score", "top_filter", "passes", "expected"),
    [
        ("blending-weight", False, ["backward"], [0.5, 0.2, 0.4]),
        ("blending-weight", True, ["forward"], [0.5, 0.2, 0.4]),  # the filter's pass gives the weights
        ("top-contributions", False, ["forward"], [0.5, 3.2, 1.4]),
        ("top-contributions", True, ["forward"], [0.5, 3.2, 1.4]),
        ("global-significance", False, ["significance"], [1.0, 2.0, 3.0]),
        ("global-significance", True, ["significance", "forward"], [1.0, 2.0, 3.0]),
    ],
)
def test_each_prune_score_takes_the_fewest_passes(score, top_filter, passes, expected):
    measures = _Measures()
    values, tops = PRUNE_SCORES[score](measures, top_filter)
    assert measures.calls == passes
    torch.testing.assert_close(values, torch.tensor(expected))
    assert (tops is measures.tops) if top_filter else tops is None


def test_every_prune_score_has_one_entry():
    assert set(PRUNE_SCORES) == set(get_args(PruneScore))


def test_restart_adam_gives_fresh_parameters_without_moments():
    params, optimizers = _params_and_adam(5)
    old = params["means"]
    restart_adam(params, optimizers, {**params, "means": torch.zeros(5, 3)})
    assert params["means"] is not old and torch.equal(params["means"].detach(), torch.zeros(5, 3))
    for name, param in params.items():
        assert optimizers[name].param_groups[0]["params"][0] is param and param not in optimizers[name].state


def test_the_schedule_says_what_follows_each_prune():
    sample, mass = PruneEvent("sample", 0.1, 0.9), PruneEvent("mass", 0.2, 0.99)
    plain = PruneSchedule([sample, mass])
    assert plain.restart_after(sample) is None and plain.restart_after(mass) is None
    official = PruneSchedule([sample, mass], reinitialize_after_sample=True, fresh_optimizer=True)
    assert official.restart_after(sample) == "reinitialize" and official.restart_after(mass) == "optimizer"
    assert PruneSchedule([sample], fresh_optimizer=True).restart_after(sample) == "optimizer"
