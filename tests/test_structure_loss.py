"""Tests for the spatial distribution (structure) losses."""

from __future__ import annotations

import itertools
import time

import pytest
import torch

from distilled3dgs_ns.structure_loss import (
    StructureLoss,
    StructureLossConfig,
    axis_histograms,
    joint_structure_loss,
    marginal_structure_loss,
    shared_bounding_box,
)


def _cloud(n: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=generator, dtype=dtype)


def _dense_axis_histogram(coords: torch.Tensor, lo: float, hi: float, resolution: int, sigma: float) -> torch.Tensor:
    """Reference: every point against every bin centre (i + 0.5), no kernel truncation."""
    u = (coords - lo) * resolution / (hi - lo)
    centres = torch.arange(resolution, dtype=coords.dtype) + 0.5
    return torch.exp(-((u[:, None] - centres[None, :]) ** 2) / (2 * sigma**2)).sum(0)


def test_factorised_marginal_equals_explicit_outer_product() -> None:
    student, teacher = _cloud(300, 0), _cloud(250, 1) * 0.8 + 0.3
    resolution, sigma, margin = 16, 0.5, 0.01
    lo, hi = shared_bounding_box(student, teacher, margin)

    def outer_histogram(points: torch.Tensor) -> torch.Tensor:
        hx, hy, hz = (
            _dense_axis_histogram(points[:, a], float(lo[a]), float(hi[a]), resolution, sigma) for a in range(3)
        )
        hist = hx[:, None, None] * hy[None, :, None] * hz[None, None, :]
        return (hist / hist.sum()).reshape(-1)

    explicit = 1 - torch.nn.functional.cosine_similarity(outer_histogram(student), outer_histogram(teacher), dim=0)
    factorised = marginal_structure_loss(student, teacher, resolution=resolution, sigma_voxels=sigma, margin=margin)
    assert float(explicit) > 1e-3  # a non-trivial case
    assert factorised.item() == pytest.approx(explicit.item(), abs=1e-5)


@pytest.mark.parametrize("sigma", [0.5, 1.7, 40.0])
def test_windowed_axis_histogram_matches_dense(sigma: float) -> None:
    points, resolution = _cloud(200, 2), 32
    lo, hi = points.amin(0) - 0.01, points.amax(0) + 0.01
    hist = axis_histograms(points, lo, hi, resolution, sigma)
    for axis in range(3):
        dense = _dense_axis_histogram(points[:, axis], float(lo[axis]), float(hi[axis]), resolution, sigma)
        torch.testing.assert_close(hist[axis], dense, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["marginal", "joint"])
def test_identical_sets_give_zero_loss(kind: str) -> None:
    points = _cloud(500, 3, torch.float32)
    loss = StructureLoss(points, StructureLossConfig(kind=kind, resolution=32))(points.clone())
    assert abs(loss.item()) < 1e-5


@pytest.mark.parametrize("kind", ["marginal", "joint"])
def test_loss_grows_with_shift(kind: str) -> None:
    teacher = _cloud(400, 4) * 0.5
    config = StructureLossConfig(kind=kind, resolution=32)
    losses = [StructureLoss(teacher, config)(teacher + torch.tensor([s, 0.0, 0.0])).item() for s in (0, 0.1, 0.3, 1.0)]
    assert all(a < b for a, b in itertools.pairwise(losses)), losses


@pytest.mark.parametrize("kind", ["marginal", "joint"])
def test_gradient_flows_and_descent_reduces_loss(kind: str) -> None:
    teacher = _cloud(300, 5) * 0.5
    # Student a shifted copy of the teacher's core, so it stays inside the box and the box is unaffected by the step.
    student = (teacher[:200] * 0.8 + torch.tensor([0.2, -0.1, 0.05])).requires_grad_(True)
    loss_fn = StructureLoss(teacher, StructureLossConfig(kind=kind, resolution=32))
    loss = loss_fn(student)
    (grad,) = torch.autograd.grad(loss, student)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with torch.no_grad():
        stepped = student - 1e-2 * grad / grad.norm()
        assert loss_fn(stepped).item() < loss.item()


def test_teacher_side_is_constant_and_cached() -> None:
    teacher = _cloud(300, 6).requires_grad_(True)
    loss_fn = StructureLoss(teacher, StructureLossConfig(resolution=32))
    inside = teacher.detach()[:100] * 0.5
    loss_fn(inside.clone().requires_grad_(True)).backward()
    assert teacher.grad is None
    cached = loss_fn._cached_hist
    loss_fn(inside * 0.9)  # same union box (the teacher's): histogram reused
    assert loss_fn._cached_hist is cached
    loss_fn(inside * 10)  # box grows: recomputed
    assert loss_fn._cached_hist is not cached
    # The cached path gives the same value as a fresh computation.
    assert loss_fn(inside).item() == pytest.approx(marginal_structure_loss(inside, teacher, resolution=32).item())


def _brute_force_joint(points: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, resolution: int) -> torch.Tensor:
    hist = torch.zeros(resolution, resolution, resolution, dtype=points.dtype)
    for point in points.tolist():
        cells = []
        for axis in range(3):
            u = (point[axis] - float(lo[axis])) * resolution / float(hi[axis] - lo[axis]) - 0.5
            u = min(max(u, 0.0), resolution - 1.0)
            i0 = min(int(u), resolution - 2)
            cells.append(((i0, 1.0 - (u - i0)), (i0 + 1, u - i0)))
        for (i, wi), (j, wj), (k, wk) in itertools.product(*cells):
            hist[i, j, k] += wi * wj * wk
    return hist


def test_joint_matches_brute_force_trilinear_scatter() -> None:
    student, teacher, resolution = _cloud(20, 7), _cloud(15, 8) + 0.4, 5
    lo, hi = shared_bounding_box(student, teacher, 0.01)
    h_s = _brute_force_joint(student, lo, hi, resolution).reshape(-1)
    h_t = _brute_force_joint(teacher, lo, hi, resolution).reshape(-1)
    expected = 1 - torch.nn.functional.cosine_similarity(h_s, h_t, dim=0)
    got = joint_structure_loss(student, teacher, resolution=resolution)
    assert got.item() == pytest.approx(expected.item(), abs=1e-10)
    assert torch.isclose(h_s.sum(), torch.tensor(20.0, dtype=h_s.dtype))  # no mass leaves the grid


def test_joint_sees_what_marginals_miss() -> None:
    t = torch.linspace(-1, 1, 400, dtype=torch.float64)
    diagonal = torch.stack([t, t, t], dim=1)
    anti_diagonal = torch.stack([t, -t, t], dim=1)  # identical marginals, different joint distribution
    assert marginal_structure_loss(anti_diagonal, diagonal, resolution=64).item() < 1e-6
    assert joint_structure_loss(anti_diagonal, diagonal, resolution=16).item() > 0.5


def test_large_cloud_is_fast_and_memory_bounded() -> None:
    student, teacher = _cloud(200_000, 9, torch.float32).requires_grad_(True), _cloud(200_000, 10, torch.float32)
    start = time.perf_counter()
    loss = marginal_structure_loss(student, teacher, resolution=256)
    loss.backward()
    elapsed = time.perf_counter() - start
    assert torch.isfinite(loss) and student.grad is not None and torch.isfinite(student.grad).all()
    assert elapsed < 5.0, f"took {elapsed:.1f}s"


def test_invalid_inputs_raise() -> None:
    with pytest.raises(ValueError):
        StructureLossConfig(kind="voxel")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        marginal_structure_loss(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError):
        StructureLoss(torch.zeros(0, 3))
