"""The pure-torch ``rasterization`` against a literal per-pixel reference, gsplat's strategy and reference renders."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from raster_reference import reference_rasterization

from distilled3dgs_ns.rasterization import binning, composite, rasterization
from distilled3dgs_ns.rasterization.composite import MIN_BATCH, SLAB_ELEMS, _schedule
from distilled3dgs_ns.rasterization.sh import sh_bases, spherical_harmonics

F64 = torch.float64
PARAMS = ("means", "quats", "scales", "opacities", "colors")


def look_at(eye: list[float], target: list[float]) -> torch.Tensor:
    """World->camera (OpenCV: x right, y down, z forward) matrix of a camera at ``eye`` looking at ``target``."""
    eye_t, target_t = torch.tensor(eye, dtype=F64), torch.tensor(target, dtype=F64)
    forward = (target_t - eye_t) / (target_t - eye_t).norm()
    right = torch.linalg.cross(forward, torch.tensor([0.0, -1.0, 0.0], dtype=F64))
    right = right / right.norm()
    down = torch.linalg.cross(forward, right)
    rot = torch.stack([right, down, forward])
    view = torch.eye(4, dtype=F64)
    view[:3, :3], view[:3, 3] = rot, -rot @ eye_t
    return view


def make_scene(
    n: int = 14, n_cams: int = 2, width: int = 23, height: int = 17, seed: int = 0, sh_bases: int | None = None
) -> dict:
    """Random float64 Gaussians in front of ``n_cams`` cameras, plus cameras, backgrounds and loss weights."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen, dtype=F64)

    scene = {
        "means": (rand(n, 3) * 2 - 1) * torch.tensor([1.2, 0.9, 0.8], dtype=F64) + torch.tensor([0.0, 0.0, 3.0]),
        "quats": torch.randn(n, 4, generator=gen, dtype=F64),
        "scales": torch.exp(math.log(0.06) + rand(n, 3) * math.log(6.0)),
        "opacities": 0.3 + 0.65 * rand(n),
        "colors": rand(n, 3) if sh_bases is None else torch.randn(n, sh_bases, 3, generator=gen, dtype=F64) * 0.4,
    }
    scene["opacities"][0] = 0.9995  # alpha clamps at 0.999 near its centre
    eyes = [[0.0, 0.0, 0.0], [0.8, -0.3, 0.4], [-0.5, 0.4, -0.2]][:n_cams]
    scene["viewmats"] = torch.stack([look_at(eye, [0.0, 0.0, 3.0]) for eye in eyes])
    focal = 1.1 * max(width, height)
    K = torch.tensor([[focal, 0.0, width / 2 + 0.3], [0.0, focal * 1.05, height / 2 - 0.2], [0.0, 0.0, 1.0]], dtype=F64)
    scene["Ks"] = K.expand(n_cams, 3, 3).clone()
    scene["width"], scene["height"] = width, height
    scene["backgrounds"] = rand(n_cams, 3)
    return scene


def render(scene: dict, fn=rasterization, **kwargs):
    args = [scene[k] for k in (*PARAMS, "viewmats", "Ks", "width", "height")]
    if fn is rasterization:
        kwargs.setdefault("packed", False)
    return fn(*args, **kwargs)


def grads_of(scene: dict, outputs: tuple[torch.Tensor, torch.Tensor], seed: int = 1) -> dict[str, torch.Tensor]:
    """Gradients of a fixed random weighting of (colours, alphas) wrt the Gaussian parameters."""
    colors, alphas = outputs[:2]
    gen = torch.Generator().manual_seed(seed)
    loss = (colors * torch.randn(colors.shape, generator=gen, dtype=F64)).sum()
    loss = loss + (alphas * torch.randn(alphas.shape, generator=gen, dtype=F64)).sum()
    grads = torch.autograd.grad(loss, [scene[k] for k in PARAMS], allow_unused=True)
    return {k: torch.zeros_like(scene[k]) if g is None else g for k, g in zip(PARAMS, grads, strict=True)}


def with_grad(scene: dict) -> dict:
    return {k: v.detach().clone().requires_grad_(True) if k in PARAMS else v for k, v in scene.items()}


def assert_matches_reference(scene: dict, check_grads: bool = True, **kwargs) -> None:
    scene = with_grad(scene)
    ours = render(scene, **kwargs)
    ref = render(scene, reference_rasterization, **{k: v for k, v in kwargs.items() if k != "absgrad"})
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(ours[1], ref[1], rtol=1e-9, atol=1e-10)
    assert torch.equal(ours[2]["radii"], ref[2])
    assert (ours[1] > 0.01).any(), "scene renders nothing: the test would be vacuous"
    if check_grads:
        ours_g, ref_g = grads_of(scene, ours), grads_of(scene, ref)
        for name in PARAMS:
            torch.testing.assert_close(ours_g[name], ref_g[name], rtol=1e-7, atol=1e-9, msg=name)


# ------------------------------------------------------------------------------------------ against the reference


@pytest.fixture(params=["default_slabs", "tiny_slabs", "small_blocks"])
def slabs(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Also run with slabs of 4-5 Gaussians and groups of 1-2 blocks, so that state carried between slabs and
    groups is tested on these small scenes, and with the 4-pixel blocks small Gaussians get."""
    if request.param == "small_blocks":
        monkeypatch.setattr(binning, "SMALL_FOOTPRINT", math.inf)
    if request.param == "tiny_slabs":
        monkeypatch.setattr(composite, "SLAB_ELEMS", 512)
        monkeypatch.setattr(composite, "MIN_BATCH", 4)
        monkeypatch.setattr(composite, "MAX_BATCH", 5)


@pytest.mark.parametrize("rasterize_mode", ["classic", "antialiased"])
def test_rgb_and_gradients_match_reference(rasterize_mode: str, slabs: None) -> None:
    scene = make_scene()
    assert_matches_reference(scene, rasterize_mode=rasterize_mode, backgrounds=scene["backgrounds"])


@pytest.mark.parametrize("render_mode", ["D", "ED", "RGB+D", "RGB+ED"])
def test_depth_modes_match_reference(render_mode: str, slabs: None) -> None:
    scene = make_scene(n=10, n_cams=1, seed=2)
    assert_matches_reference(scene, render_mode=render_mode, backgrounds=scene["backgrounds"])


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_colours_match_reference(degree: int) -> None:
    scene = make_scene(n=10, seed=3 + degree, sh_bases=16)
    assert_matches_reference(scene, sh_degree=degree)


@pytest.mark.parametrize("per_camera", [False, True])
def test_sh_contraction_gradients_match_autograd(per_camera: bool) -> None:
    """The SH contraction's own backward against autograd through the plain product and sum: coefficients shared by
    two cameras (summed out) or per camera, and more stored bands than the degree renders (zero gradient there)."""
    gen = torch.Generator().manual_seed(11)
    dirs = torch.randn(2, 7, 3, dtype=F64, generator=gen, requires_grad=True)
    coeffs = torch.randn(*((2,) if per_camera else ()), 7, 16, 3, dtype=F64, generator=gen, requires_grad=True)
    weights = torch.randn(2, 7, 3, dtype=F64, generator=gen)
    ours = spherical_harmonics(2, dirs, coeffs)
    plain = (sh_bases(9, F.normalize(dirs, dim=-1))[..., None] * coeffs.expand(2, 7, 16, 3)[..., :9, :]).sum(-2)
    torch.testing.assert_close(ours, plain)
    for got, want in zip(
        torch.autograd.grad((ours * weights).sum(), (dirs, coeffs)),
        torch.autograd.grad((plain * weights).sum(), (dirs, coeffs)),
        strict=True,
    ):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(("footprint", "edge"), [(1.0, 4), (8.0, 8)])
def test_small_gaussians_get_small_blocks(footprint: float, edge: int) -> None:
    assert binning._block_edge(16, torch.full((10,), footprint)) == edge
    assert binning._block_edge(12, torch.full((10,), footprint)) == 4  # 8 does not divide a 12-pixel tile
    assert binning._block_edge(10, torch.full((10,), footprint)) == 10
    assert binning._block_edge(16, torch.zeros(0)) == 8


def test_per_camera_colours_and_no_background_match_reference() -> None:
    scene = make_scene(n=10, seed=7)
    scene["colors"] = torch.rand(2, 10, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    assert_matches_reference(scene)


@pytest.mark.parametrize(("tile_size", "width", "height"), [(8, 21, 11), (12, 25, 14), (32, 40, 33), (16, 16, 16)])
def test_tile_sizes_and_odd_image_sizes_match_reference(tile_size: int, width: int, height: int, slabs: None) -> None:
    scene = make_scene(n=12, n_cams=1, width=width, height=height, seed=tile_size + width)
    assert_matches_reference(scene, tile_size=tile_size, backgrounds=scene["backgrounds"])


def test_early_stop_and_alpha_clamp_match_reference(slabs: None) -> None:
    """A stack of near-opaque Gaussians: pixels stop before transmittance reaches 1e-4; alpha clamps at 0.999."""
    scene = make_scene(n=8, n_cams=1, seed=11)
    scene["means"][:6] = torch.tensor([0.0, 0.0, 3.0], dtype=F64) + 0.02 * torch.arange(6, dtype=F64)[:, None]
    scene["scales"][:6] = 0.5
    scene["opacities"][:6] = torch.tensor([0.9995, 0.99, 0.97, 0.99, 0.98, 0.9], dtype=F64)
    assert_matches_reference(scene, backgrounds=scene["backgrounds"])  # with a background, so that Gaussians
    # behind the stop would get gradient (via T_final * background) if the stop were not honoured in the backward
    ref_alpha = render(scene, reference_rasterization)[1]
    assert (1 - ref_alpha).min() > 1e-4 and (1 - ref_alpha).min() < 1e-2, "no pixel exercised the early stop"


def test_culling_near_far_and_off_screen() -> None:
    scene = make_scene(n=12, n_cams=1, seed=5)
    scene["means"][1] = torch.tensor([0.0, 0.0, 0.005], dtype=F64)  # in front of the camera but before near_plane
    scene["means"][2] = torch.tensor([0.0, 0.0, -2.0], dtype=F64)  # behind the camera
    scene["means"][3] = torch.tensor([30.0, 0.0, 3.0], dtype=F64)  # far off screen
    scene["means"][4] = torch.tensor([0.0, 0.0, 9.0], dtype=F64)  # beyond far_plane
    scene["means"][5] = torch.tensor([-30.0, 0.0, 3.0], dtype=F64)  # off screen, left
    scene["means"][6] = torch.tensor([0.0, -30.0, 3.0], dtype=F64)  # off screen, top
    scene["means"][7] = torch.tensor([0.0, 30.0, 3.0], dtype=F64)  # off screen, bottom
    assert_matches_reference(scene, far_plane=8.0)
    scene = with_grad(scene)
    colors, alphas, info = render(scene, far_plane=8.0)
    assert (info["radii"][0, 1:8] == 0).all() and (info["radii"][0, 8:] > 0).any()
    grads = grads_of(scene, (colors, alphas))
    for name in PARAMS:
        assert torch.equal(grads[name][1:8], torch.zeros_like(grads[name][1:8])), name
        assert torch.isfinite(grads[name]).all(), name


@pytest.mark.parametrize("n", [0, 5])
def test_empty_scene_renders_background_with_zero_gradients(n: int) -> None:
    scene = with_grad(make_scene(n=max(n, 1), n_cams=2, seed=9))
    if n == 0:
        scene = with_grad({k: v[:0] if k in PARAMS else v for k, v in scene.items()})
    else:
        with torch.no_grad():
            scene["means"][:, 2] = -5.0  # everything behind the cameras
    colors, alphas, info = render(scene, backgrounds=scene["backgrounds"], render_mode="RGB+ED")
    assert colors.shape == (2, 17, 23, 4) and alphas.shape == (2, 17, 23, 1)
    torch.testing.assert_close(colors[..., :3], scene["backgrounds"][:, None, None, :].expand(2, 17, 23, 3))
    assert (alphas == 0).all() and (colors[..., 3] == 0).all()
    assert (info["radii"] == 0).all()
    for name, grad in grads_of(scene, (colors, alphas)).items():
        assert torch.equal(grad, torch.zeros_like(grad)), name


# ------------------------------------------------------------------------------------------------- gradients


def project(outputs: tuple[torch.Tensor, torch.Tensor, dict], n: int = 3) -> torch.Tensor:
    """A few fixed random projections of (colours, alphas): gradcheck then needs n backward passes, not one per
    pixel, while every pixel still counts."""
    flat = torch.cat([outputs[0].flatten(), outputs[1].flatten()])
    return torch.randn(n, len(flat), generator=torch.Generator().manual_seed(0), dtype=F64) @ flat


def test_gradcheck_full_pipeline() -> None:
    """Finite differences through projection, SH-free colours and compositing (one tile: stable binning)."""
    scene = make_scene(n=5, n_cams=1, width=16, height=16, seed=13)
    scene["opacities"][0] = 0.9  # keep clear of the alpha clamp's kink

    def fn(means, quats, scales, opacities, colors):
        out = rasterization(
            means, quats, scales, opacities, colors, scene["viewmats"], scene["Ks"], 16, 16, packed=False,
            render_mode="RGB+D", backgrounds=scene["backgrounds"], rasterize_mode="antialiased",
        )  # fmt: skip
        return project(out)

    inputs = [scene[k].clone().requires_grad_(True) for k in PARAMS]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradcheck_backgrounds_packed_multi_tile() -> None:
    scene = make_scene(n=6, n_cams=2, width=20, height=13, seed=17)
    scene["opacities"][0] = 0.9

    def fn(means, opacities, colors, backgrounds):
        out = rasterization(
            means, scene["quats"], scene["scales"], opacities, colors, scene["viewmats"], scene["Ks"], 20, 13,
            tile_size=8, packed=True, backgrounds=backgrounds,
        )  # fmt: skip
        return project(out)

    inputs = [scene[k].clone().requires_grad_(True) for k in ("means", "opacities", "colors", "backgrounds")]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_packed_matches_unpacked() -> None:
    scene = with_grad(make_scene(n=14, seed=19))
    scene["means"].data[3, 2] = -1.0  # one culled Gaussian makes packed and unpacked differ in layout
    unpacked = render(scene, packed=False, sh_degree=None, backgrounds=scene["backgrounds"])
    packed = render(scene, packed=True, backgrounds=scene["backgrounds"])
    torch.testing.assert_close(packed[0], unpacked[0], rtol=1e-12, atol=1e-12)
    info_u, info_p = unpacked[2], packed[2]
    sel = info_u["radii"] > 0
    assert info_u["gaussian_ids"] is None and info_u["camera_ids"] is None
    assert torch.equal(info_p["camera_ids"], torch.nonzero(sel)[:, 0])
    assert torch.equal(info_p["gaussian_ids"], torch.nonzero(sel)[:, 1])
    for key in ("radii", "means2d", "depths", "conics", "opacities"):
        torch.testing.assert_close(info_p[key], info_u[key][sel])
    grads_unpacked = grads_of(scene, unpacked)
    for name, grad in grads_of(scene, packed).items():
        torch.testing.assert_close(grad, grads_unpacked[name], rtol=1e-10, atol=1e-12)


def test_float32_matches_float64() -> None:
    """The float32 path (the one used in training) stays close to float64 on a denser scene."""
    scene = make_scene(n=300, n_cams=1, width=96, height=80, seed=23)
    scene["scales"] = scene["scales"] * 0.5
    c64, a64, _ = render(scene, backgrounds=scene["backgrounds"])
    c32, a32, _ = render({k: v.float() if torch.is_tensor(v) else v for k, v in scene.items()}, backgrounds=None)
    c32 = c32 + (1 - a32) * scene["backgrounds"][:, None, None, :].float()
    torch.testing.assert_close(c32.double(), c64, atol=2e-5, rtol=0)
    torch.testing.assert_close(a32.double(), a64, atol=2e-5, rtol=0)


def test_absgrad_sums_per_pixel_absolute_gradients(slabs: None) -> None:
    """``means2d.absgrad`` of a loss over two pixels is |grad of pixel 1| + |grad of pixel 2| (gsplat's definition)."""
    scene = with_grad(make_scene(n=14, n_cams=1, seed=29))
    pixels = [(8, 11), (3, 4)]

    def means2d_grad(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        colors, _, info = render(scene, absgrad=True)
        info["means2d"].retain_grad()
        (colors * weights).sum().backward()
        return info["means2d"].grad, info["means2d"].absgrad

    single = []
    for i, j in pixels:
        weights = torch.zeros(1, 17, 23, 3, dtype=F64)
        weights[0, i, j] = torch.tensor([1.0, -2.0, 0.5])
        single.append(means2d_grad(weights)[0])
    both = torch.zeros(1, 17, 23, 3, dtype=F64)
    for i, j in pixels:
        both[0, i, j] = torch.tensor([1.0, -2.0, 0.5])
    grad, absgrad = means2d_grad(both)
    torch.testing.assert_close(absgrad, single[0].abs() + single[1].abs(), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(grad, single[0] + single[1], rtol=1e-10, atol=1e-14)
    assert (absgrad > grad.abs() + 1e-12).any(), "the two pixels' gradients never had opposite signs"


# --------------------------------------------------------------------------------------- strategy and dispatch


@pytest.mark.parametrize("absgrad", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_drives_gsplat_default_strategy(absgrad: bool, packed: bool) -> None:
    from gsplat.strategy import DefaultStrategy

    gen = torch.Generator().manual_seed(31)
    n = 60
    params = torch.nn.ParameterDict(
        {
            "means": (torch.rand(n, 3, generator=gen) - 0.5) * torch.tensor([2.0, 2.0, 1.0])
            + torch.tensor([0, 0, 3.0]),
            "quats": torch.randn(n, 4, generator=gen),
            "scales": torch.full((n, 3), math.log(0.08)) + 0.5 * torch.randn(n, 3, generator=gen),
            "opacities": torch.where(torch.arange(n) % 5 == 0, -6.0, 0.5),  # every 5th below prune_opa
            "colors": torch.rand(n, 3, generator=gen),
        }
    )
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    strategy = DefaultStrategy(
        refine_start_iter=1, refine_every=3, grow_grad2d=1e-7, reset_every=1000, absgrad=absgrad, verbose=False
    )
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)
    viewmat, K = torch.eye(4)[None], torch.tensor([[40.0, 0, 24], [0, 40.0, 20], [0, 0, 1]])[None]
    target = torch.rand(1, 40, 48, 3, generator=gen)
    for step in range(4):
        n_before = len(params["means"])
        colors, _, info = rasterization(
            params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"]),
            params["colors"], viewmat, K, 48, 40, packed=packed, absgrad=absgrad,
        )  # fmt: skip
        strategy.step_pre_backward(params, optimizers, state, step, info)
        ((colors - target) ** 2).mean().backward()
        means2d = info["means2d"]
        assert means2d.grad is not None and means2d.grad.shape == means2d.shape
        if absgrad:
            assert (means2d.absgrad >= means2d.grad.abs() * (1 - 1e-6)).all()
        strategy.step_post_backward(params, optimizers, state, step, info, packed=packed)
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad()
    assert len(params["means"]) > n_before, "nothing was densified"
    assert (torch.sigmoid(params["opacities"]) > strategy.prune_opa).all(), "low-opacity Gaussians were not pruned"
    assert all(len(p) == len(params["means"]) for p in params.values())


def test_intersection_info_matches_gsplat_encoding() -> None:
    """``tiles_per_gauss``, ``isect_ids``, ``flatten_ids``, ``isect_offsets`` as gsplat's own (pure-torch) binning."""
    from gsplat.cuda._torch_impl import _isect_offset_encode, _isect_tiles

    scene = make_scene(n=30, n_cams=2, width=40, height=33, seed=3)
    scene = {k: v.float() if torch.is_tensor(v) else v for k, v in scene.items()}
    _, _, info = render(scene, tile_size=8)
    tiles_per_gauss, isect_ids, flatten_ids = _isect_tiles(
        info["means2d"].detach(), info["radii"], info["depths"].detach(), 8, info["tile_width"], info["tile_height"]
    )
    assert torch.equal(info["tiles_per_gauss"], tiles_per_gauss)
    assert torch.equal(info["isect_ids"], isect_ids) and torch.equal(info["flatten_ids"], flatten_ids)
    offsets = _isect_offset_encode(isect_ids, 2, info["tile_width"], info["tile_height"])
    assert torch.equal(info["isect_offsets"], offsets)


def test_dispatch_sends_cuda_to_gsplat_and_everything_else_to_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    import gsplat.rendering

    from distilled3dgs_ns.rasterization import backend

    monkeypatch.setattr(backend, "gsplat_problem", lambda: None)  # as where gsplat's kernels load
    calls = []
    monkeypatch.setattr(gsplat.rendering, "rasterization", lambda *args, **kwargs: calls.append(kwargs) or "gsplat")
    scene = make_scene(n=4, n_cams=1)
    assert render(scene, backend="gsplat", channel_chunk=8) == "gsplat"
    assert calls[0]["channel_chunk"] == 8 and calls[0]["sparse_grad"] is False
    render(scene)  # CPU tensors: the torch path, gsplat untouched
    assert len(calls) == 1
    with pytest.raises(NotImplementedError):
        render(scene, camera_model="fisheye")
    with pytest.raises(TypeError):
        render(scene, no_such_argument=1)


def test_slab_schedule_is_bounded_and_covers_every_list_once() -> None:
    lens = sorted([0, 1, 5, 16, 17, 300, 301, 4000, 64, 64, 7] * 40, reverse=True)
    pixels = 64
    seen = [np.zeros(n, dtype=int) for n in lens]
    groups = list(_schedule(lens, pixels))
    assert [g[0] for g in groups[1:]] == [g[1] for g in groups[:-1]] and groups[-1][1] == len(lens)
    for g0, g1, slabs in groups:
        assert (g1 - g0) * pixels * MIN_BATCH <= max(SLAB_ELEMS, pixels * MIN_BATCH)
        for b1, k0, n in slabs:
            assert g0 < b1 <= g1 and (b1 - g0) * pixels * n <= max(SLAB_ELEMS, pixels * MIN_BATCH)
            for b in range(g0, b1):
                seen[b][k0 : k0 + n] += 1
    assert all((s == 1).all() for s in seen)


# --------------------------------------------------------------------------------------------- reference scene


def _shared_dir() -> Path:
    return Path(os.environ.get("DISTILLED3DGS_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


def test_reference_scene_matches_opensplat() -> None:
    """The seeded 20k-Gaussian scene: render PSNR and per-parameter gradient cosine against OpenSplat (CPU)."""
    folder = _shared_dir() / "reference" / "cpu-raster"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    data = np.load(folder / "scene_n20000_256x256_seed0.npz")
    render_ref = np.load(folder / "opensplat_n20000_256x256_seed0_render.npy")
    grads_ref = np.load(folder / "opensplat_n20000_256x256_seed0_grads.npz")
    params = {k: torch.from_numpy(data[k]).requires_grad_(True) for k in PARAMS}
    colors, _, _ = rasterization(
        *(params[k] for k in PARAMS), torch.from_numpy(data["viewmat"])[None], torch.from_numpy(data["K"])[None],
        int(data["width"]), int(data["height"]), packed=False, backgrounds=torch.from_numpy(data["background"])[None],
    )  # fmt: skip
    (colors[0] * torch.from_numpy(data["dL_dimg"])).sum().backward()
    mse = float(np.mean((colors[0].detach().numpy() - render_ref) ** 2))
    assert 10 * math.log10(1.0 / mse) >= 50.0
    for name in PARAMS:
        ours, ref = params[name].grad.numpy().ravel(), grads_ref[name].ravel()
        assert ours @ ref / (np.linalg.norm(ours) * np.linalg.norm(ref)) >= 0.998, name
