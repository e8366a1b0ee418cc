"""Viewer files in the capture's frame: the similarity that undoes nerfstudio's dataparser transform moves every
Gaussian (positions, scales, rotations, SH colour) so that the scene renders the same from the moved cameras."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from helpers import look_at_camera, textured_splat

from distilled3dgs_ns.compression.frame import Similarity, _quaternion, sh_rotation, transform_gaussians
from distilled3dgs_ns.compression.model_io import apply_to_model, gaussians_of
from distilled3dgs_ns.rasterization.sh import sh_bases


def _rotation(seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.linalg.det(q))  # a proper rotation


def _quat_matrix(q: torch.Tensor) -> torch.Tensor:
    w, x, y, z = q
    return torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)]),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)]),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]),
    ])  # fmt: skip


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_rotated_sh_coefficients_give_the_rotated_colour(degree):
    rotation = _rotation(degree)
    generator = torch.Generator().manual_seed(10 + degree)
    rest = torch.randn((degree + 1) ** 2 - 1, generator=generator, dtype=torch.float64)
    dirs = torch.nn.functional.normalize(torch.randn(50, 3, generator=generator, dtype=torch.float64), dim=-1)
    count = (degree + 1) ** 2
    before = sh_bases(count, dirs)[:, 1:] @ rest
    after = sh_bases(count, dirs @ rotation.T)[:, 1:] @ (sh_rotation(rotation, degree) @ rest)  # at R d
    assert torch.allclose(before, after, atol=1e-10)


@pytest.mark.parametrize("seed", range(6))
def test_quaternion_of_a_rotation(seed):
    rotation = _rotation(seed)
    assert torch.allclose(_quat_matrix(_quaternion(rotation)), rotation, atol=1e-10)


def _moved_camera(camera, move: Similarity):
    moved = copy.deepcopy(camera)
    c2w = camera.camera_to_worlds[0].to(torch.float64)
    rotation = move.rotation.to(torch.float64)
    position = move.scale * (rotation @ c2w[:, 3] + move.translation.to(torch.float64))
    moved.camera_to_worlds = torch.cat([rotation @ c2w[:, :3], position[:, None]], dim=1)[None].float()
    return moved


def test_the_moved_scene_renders_the_same_from_the_moved_camera():
    model = textured_splat(sh_degree=3, num_points=300, seed=5)
    model.eval()
    move = Similarity(_rotation(7), torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64), 1.7)
    camera = look_at_camera((2.0, 0.5, 1.0), size=32)
    original = gaussians_of(model, drop_invisible=False)
    with torch.no_grad():
        reference = model.get_outputs_for_camera(camera)["rgb"]
        apply_to_model(model, transform_gaussians(original, move))
        moved = model.get_outputs_for_camera(_moved_camera(camera, move))["rgb"]
    assert -10 * math.log10(float(((reference - moved) ** 2).mean())) > 40.0
    back = transform_gaussians(transform_gaussians(original, move), move.inverse())
    assert torch.allclose(back.means, original.means, atol=1e-5)
    assert torch.allclose(back.features_rest, original.features_rest, atol=1e-5)
    unit = torch.nn.functional.normalize(original.quats, dim=-1)
    assert (back.quats * unit).sum(-1).abs().min() > 1 - 1e-6


def test_the_run_transform_is_read_or_refused(tmp_path):
    (tmp_path / "config.yml").write_text("")
    with pytest.raises(Exception, match="dataparser_transforms.json: cannot read the dataparser transform"):
        Similarity.of_run(tmp_path / "config.yml")
    (tmp_path / "dataparser_transforms.json").write_text(
        '{"transform": [[1, 0, 0, 0.5], [0, 1, 0, 0], [0, 0, 1, 0]], "scale": 2.0}'
    )
    move = Similarity.of_run(tmp_path / "config.yml")
    assert move.scale == 2.0 and move.translation.tolist() == [0.5, 0.0, 0.0] and not move.is_identity
    assert torch.allclose(move.inverse().translation, torch.tensor([-1.0, 0.0, 0.0], dtype=torch.float64))


def test_save_writes_the_capture_frame_and_eval_reads_it_back(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from test_teachers import write_teacher

    from distilled3dgs_ns.compression import cli
    from distilled3dgs_ns.compression.frame import from_capture
    from distilled3dgs_ns.compression.spz import read_spz

    model = textured_splat(sh_degree=3, num_points=200, seed=6)
    config = write_teacher(tmp_path / "run", model, scale=2.0)  # nerfstudio's frame: twice the capture's size
    monkeypatch.setattr(cli, "splat_pipeline", lambda *args: SimpleNamespace(model=model))
    cli.entrypoint(["save", "--load-config", str(config), "--output", str(tmp_path / "capture.spz")])
    cli.entrypoint(
        ["save", "--load-config", str(config), "--output", str(tmp_path / "ns.spz"), "--frame", "nerfstudio"]
    )
    ours = gaussians_of(model)
    capture, kept = read_spz(tmp_path / "capture.spz"), read_spz(tmp_path / "ns.spz")
    assert torch.allclose(capture.means, ours.means / 2, atol=1e-3) and torch.allclose(
        kept.means, ours.means, atol=1e-3
    )
    assert torch.allclose(capture.scales, ours.scales - math.log(2.0), atol=0.05)
    back = from_capture(capture, Similarity.of_run(config))  # what eval --compact does
    assert torch.allclose(back.means, ours.means, atol=2e-3)
