"""SPZ and .splat export: quantisation bounds, the RDF -> RUB flip, the byte layout, an independent reader (PlayCanvas'
splat-transform, when installed), and the ``distilled3dgs-export save`` command."""

from __future__ import annotations

import gzip
import re
import struct
import subprocess

import numpy as np
import pytest
import torch
from helpers import SPLAT_TRANSFORM, look_at_camera, splat_transform_ply, textured_splat

from distilled3dgs_ns.compression.cli import entrypoint
from distilled3dgs_ns.compression.compact_format import write_compact
from distilled3dgs_ns.compression.model_io import apply_to_model, gaussians_of
from distilled3dgs_ns.compression.ply import write_ply
from distilled3dgs_ns.compression.splat import read_splat, write_splat
from distilled3dgs_ns.compression.spz import SpzError, read_spz, sh_flip_signs, write_spz
from distilled3dgs_ns.rasterization.sh import sh_bases


@pytest.fixture(scope="module")
def model():
    return textured_splat(sh_degree=3, num_points=300)


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_flip_signs_keep_the_colour_of_every_direction(degree):
    generator = torch.Generator().manual_seed(degree)
    count = (degree + 1) ** 2
    coeffs = torch.randn(count, generator=generator, dtype=torch.float64)
    dirs = torch.nn.functional.normalize(torch.randn(64, 3, generator=generator, dtype=torch.float64), dim=-1)
    flipped = dirs * torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)
    signs = torch.tensor((1.0, *sh_flip_signs(degree)), dtype=torch.float64)
    before = sh_bases(count, dirs) @ coeffs
    after = sh_bases(count, flipped) @ (coeffs * signs)
    assert torch.allclose(before, after, atol=1e-12)
    assert -1.0 in sh_flip_signs(degree) and 1.0 in sh_flip_signs(degree)


def test_round_trip_is_within_the_formats_quantisation(model, tmp_path):
    g = gaussians_of(model)
    size = write_spz(tmp_path / "scene.spz", g)
    back = read_spz(tmp_path / "scene.spz")
    assert size == (tmp_path / "scene.spz").stat().st_size and back.num_gaussians == g.num_gaussians
    assert (back.means - g.means).abs().max() <= 0.5 / 4096 + 1e-6
    unit = torch.nn.functional.normalize(g.quats, dim=-1)
    assert (unit * back.quats).sum(-1).abs().min() > 0.999
    inside = (g.scales > -10) & (g.scales < 5.9)
    assert (back.scales - g.scales)[inside].abs().max() <= 0.5 / 16 + 1e-6
    alpha, alpha_back = torch.sigmoid(g.opacities), torch.sigmoid(back.opacities)
    assert (alpha - alpha_back).abs().max() <= 0.5 / 255 + 1e-5
    assert (back.features_dc - g.features_dc).abs().max() <= 0.5 / (0.15 * 255) + 1e-5
    rest_error = (back.features_rest - g.features_rest).abs()
    rest_error[g.features_rest.abs() > 0.9] = 0.0  # SPZ clips SH coefficients to [-1, 1)
    assert rest_error[:, :3].max() <= 4.5 / 128 + 1e-5  # 5 bits: buckets of 8 steps
    assert rest_error[:, 3:].max() <= 4.5 / 128 + 1e-5  # 5 bits too (the reference's 4 cost the demo 0.27 dB)
    assert rest_error.max() > 2.5 / 128  # and no finer: buckets of 8 steps, not 4


def test_bytes_follow_the_reference_layout_in_rub(model, tmp_path):
    g = gaussians_of(model)
    write_spz(tmp_path / "scene.spz", g)
    raw = gzip.decompress((tmp_path / "scene.spz").read_bytes())
    magic, version, n, degree, fractional_bits, flags, _ = struct.unpack_from("<IIIBBBB", raw)
    assert (magic, version, n, degree, fractional_bits, flags) == (0x5053474E, 3, g.num_gaussians, 3, 12, 0)
    assert len(raw) == 16 + n * (9 + 1 + 3 + 3 + 4 + 45)
    first = np.frombuffer(raw, np.uint8, 9, 16).reshape(3, 3).astype(np.int64)
    fixed = first[:, 0] | (first[:, 1] << 8) | (first[:, 2] << 16)
    fixed = np.where(fixed >= 1 << 23, fixed - (1 << 24), fixed) / 4096
    expected = g.means[0].double().numpy() * np.array([1.0, -1.0, -1.0])
    assert np.abs(fixed - expected).max() <= 0.5 / 4096 + 1e-6


def test_decoded_scene_renders_like_the_model(model, tmp_path):
    camera = look_at_camera((2.0, 0.5, 1.0), size=32)
    with torch.no_grad():
        reference = model.get_outputs_for_camera(camera)["rgb"]
        write_spz(tmp_path / "scene.spz", gaussians_of(model))
        apply_to_model(model, read_spz(tmp_path / "scene.spz"))
        decoded = model.get_outputs_for_camera(camera)["rgb"]
    psnr = -10 * torch.log10(((reference - decoded) ** 2).mean())
    assert psnr > 30.0


@pytest.mark.skipif(SPLAT_TRANSFORM is None, reason="PlayCanvas splat-transform not installed (npm)")
def test_splat_transform_reads_our_file(tmp_path):
    """splat-transform 3.x reads SPZ raw, as PLY coordinates (its writer bakes no frame either); 2.x turned RUB back
    into the PLY's frame, as Niantic's reference does. Either way it is our scene, Gaussian for Gaussian."""
    g = gaussians_of(textured_splat(sh_degree=3, num_points=300, seed=3))
    write_spz(tmp_path / "scene.spz", g)
    theirs = splat_transform_ply(tmp_path / "scene.spz", tmp_path)
    ours = read_spz(tmp_path / "scene.spz")
    printed = subprocess.run([SPLAT_TRANSFORM, "--version"], capture_output=True, text=True)
    raw = int(re.search(r"v(\d+)\.", printed.stdout + printed.stderr).group(1)) >= 3
    flip = np.array([1.0, -1.0, -1.0]) if raw else np.ones(3)
    signs = np.array(sh_flip_signs(3))[:, None] if raw else 1.0
    assert len(theirs["means"]) == g.num_gaussians
    assert np.abs(theirs["means"] * flip - g.means.numpy()).max() <= 0.5 / 4096 + 1e-5
    assert np.abs(theirs["rest"] * signs - ours.features_rest.numpy()).max() < 1e-5
    quats = theirs["quats"] / np.linalg.norm(theirs["quats"], axis=1, keepdims=True)
    quats = quats * (np.array([1.0, 1.0, -1.0, -1.0]) if raw else 1.0)
    assert np.abs((quats * ours.quats.numpy()).sum(axis=1)).min() > 0.9999


def test_save_command_converts_a_compact_file_and_refuses_bad_input(model, tmp_path, capsys):
    write_compact(tmp_path / "scene.compact", gaussians_of(model))
    entrypoint(["save", "--input", str(tmp_path / "scene.compact"), "--output", str(tmp_path / "scene.spz")])
    assert read_spz(tmp_path / "scene.spz").num_gaussians == gaussians_of(model).num_gaussians
    for args in (
        ["--input", str(tmp_path / "scene.compact"), "--output", str(tmp_path / "scene.gltf")],
        ["--output", str(tmp_path / "x.spz")],
        ["--input", str(tmp_path / "scene.spz"), "--output", str(tmp_path / "scene.spz")],
    ):
        with pytest.raises(SystemExit) as exit_info:
            entrypoint(["save", *args])
        assert exit_info.value.code == 2
        assert "distilled3dgs-export: " in capsys.readouterr().err


def test_truncated_spz_is_named(model, tmp_path):
    write_spz(tmp_path / "scene.spz", gaussians_of(model))
    data = gzip.decompress((tmp_path / "scene.spz").read_bytes())
    (tmp_path / "cut.spz").write_bytes(gzip.compress(data[:-7]))
    with pytest.raises(Exception, match="cut.spz"):
        read_spz(tmp_path / "cut.spz")


def test_splat_round_trip_drops_only_the_sh_rest(model, tmp_path):
    g = gaussians_of(model)
    assert write_splat(tmp_path / "scene.splat", g) == 32 * g.num_gaussians
    back = read_splat(tmp_path / "scene.splat", sh_degree=3)
    order = torch.argsort(-(g.scales.sum(-1).exp() * torch.sigmoid(g.opacities).view(-1)), stable=True)
    assert torch.equal(back.means, g.means[order]) and torch.allclose(back.scales, g.scales[order], atol=1e-5)
    unit = torch.nn.functional.normalize(g.quats[order], dim=-1)
    assert (unit * back.quats).sum(-1).abs().min() > 0.999
    alpha = torch.sigmoid(g.opacities[order])
    assert (torch.sigmoid(back.opacities) - alpha).abs().max() <= 0.5 / 255 + 1e-4
    assert back.features_rest.abs().max() == 0 and back.sh_degree == 3


@pytest.mark.skipif(SPLAT_TRANSFORM is None, reason="PlayCanvas splat-transform not installed (npm)")
def test_splat_transform_reads_our_splat_file(tmp_path):
    g = gaussians_of(textured_splat(sh_degree=3, num_points=300, seed=3))
    write_splat(tmp_path / "scene.splat", g)
    theirs = splat_transform_ply(tmp_path / "scene.splat", tmp_path)
    ours = read_splat(tmp_path / "scene.splat", sh_degree=0)
    assert len(theirs["means"]) == g.num_gaussians
    assert np.array_equal(theirs["means"], ours.means.numpy())
    assert np.abs(theirs["scales"] - ours.scales.numpy()).max() < 1e-5
    alpha = torch.sigmoid(torch.from_numpy(theirs["opacity"]))
    assert (alpha - torch.sigmoid(ours.opacities).view(-1)).abs().max() < 1e-3


def _as_version_four(data: bytes) -> bytes:
    """Our version 3 file rewritten as version 4: the same attribute bytes as one zstd stream each, in a table."""
    import zstandard

    raw = gzip.decompress(data)
    magic, _, n, degree, bits, flags, _ = struct.unpack_from("<IIIBBBB", raw)
    sizes = [9, 1, 3, 3, 4, 3 * ((degree + 1) ** 2 - 1)]
    chunks, offset = [], 16
    for size in (size for size in sizes if size):
        chunks.append(raw[offset : offset + n * size])
        offset += n * size
    packed = [zstandard.ZstdCompressor().compress(chunk) for chunk in chunks]
    header = struct.pack("<IIIBBBBI12x", magic, 4, n, degree, bits, flags, len(chunks), 32)
    table = b"".join(struct.pack("<QQ", len(p), len(c)) for p, c in zip(packed, chunks, strict=True))
    return header + table + b"".join(packed)


def test_version_four_reads_like_version_three(model, tmp_path):
    write_spz(tmp_path / "scene.spz", gaussians_of(model))
    (tmp_path / "v4.spz").write_bytes(_as_version_four((tmp_path / "scene.spz").read_bytes()))
    three, four = read_spz(tmp_path / "scene.spz"), read_spz(tmp_path / "v4.spz")
    for name in ("means", "scales", "quats", "opacities", "features_dc", "features_rest"):
        assert torch.equal(getattr(three, name), getattr(four, name)), name
    (tmp_path / "cut.spz").write_bytes((tmp_path / "v4.spz").read_bytes()[:-50])
    with pytest.raises(SpzError, match="cut.spz"):
        read_spz(tmp_path / "cut.spz")


@pytest.mark.skipif(SPLAT_TRANSFORM is None, reason="PlayCanvas splat-transform not installed (npm)")
def test_we_read_splat_transforms_version_four(model, tmp_path):
    g = gaussians_of(model)
    write_ply(tmp_path / "scene.ply", g)
    subprocess.run(
        [SPLAT_TRANSFORM, "-w", "-q", "--spz-version", "4", str(tmp_path / "scene.ply"), str(tmp_path / "v4.spz")],
        check=True,
    )
    assert (tmp_path / "v4.spz").read_bytes()[:8] == struct.pack("<II", 0x5053474E, 4)
    ours = read_spz(tmp_path / "v4.spz")
    # splat-transform 3.x stores the PLY's coordinates as they are; we read SPZ as RUB, as the reference writes it
    assert ours.num_gaussians == g.num_gaussians
    assert (ours.means * torch.tensor([1.0, -1.0, -1.0]) - g.means).abs().max() <= 0.5 / 4096 + 1e-5
