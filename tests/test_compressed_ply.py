"""PlayCanvas compressed PLY: quantisation bounds, the byte layout, the format table, and PlayCanvas' splat-transform
(when installed) reading our file and writing one that we read."""

from __future__ import annotations

import math
import subprocess
import typing

import numpy as np
import pytest
import torch
from helpers import SPLAT_TRANSFORM, look_at_camera, splat_transform_ply, textured_splat

from distilled3dgs_ns.compression.cli import entrypoint
from distilled3dgs_ns.compression.compact_format import SH_C0, CompactGaussians
from distilled3dgs_ns.compression.compressed_ply import (
    CHUNK,
    CompressedPlyError,
    morton_order,
    read_compressed_ply,
    write_compressed_ply,
)
from distilled3dgs_ns.compression.formats import FORMATS, format_of, read_gaussians
from distilled3dgs_ns.compression.model_io import apply_to_model, gaussians_of
from distilled3dgs_ns.compression.ply import write_ply
from distilled3dgs_ns.names import FormatName


@pytest.fixture(scope="module")
def model():
    return textured_splat(sh_degree=3, num_points=700)


def _matched(g: CompactGaussians, back: CompactGaussians) -> CompactGaussians:
    """``g``'s Gaussians in the file's (Morton) order."""
    order = torch.from_numpy(morton_order(g.means.double().numpy()))
    return CompactGaussians(**{k: v[order] for k, v in g.params().items()}, **_no_vq(g))


def _no_vq(g: CompactGaussians) -> dict[str, typing.Any]:
    return {"sh_degree": g.sh_degree, "vq_mask": g.vq_mask, "codebook": g.codebook, "indices": g.indices}


def test_round_trip_is_within_the_formats_quantisation(model, tmp_path):
    g = gaussians_of(model)
    size = write_compressed_ply(tmp_path / "scene.compressed.ply", g)
    back = read_compressed_ply(tmp_path / "scene.compressed.ply")
    chunks = math.ceil(g.num_gaussians / CHUNK)
    assert back.num_gaussians == g.num_gaussians and back.sh_degree == 3
    assert size < 18 * 4 * chunks + g.num_gaussians * (16 + 45) + 2000
    ref = _matched(g, back)
    extent = (g.means.max(0).values - g.means.min(0).values).max()
    assert (back.means - ref.means).abs().max() <= extent / 1023 / 2 + 1e-5
    assert (back.scales - ref.scales).abs().max() <= (g.scales.max() - g.scales.min()) / 1023 / 2 + 1e-5
    alpha, alpha_back = torch.sigmoid(ref.opacities), torch.sigmoid(back.opacities)
    assert (alpha - alpha_back).abs().max() <= 0.5 / 255 + 1e-5
    colour, colour_back = ref.features_dc * SH_C0, back.features_dc * SH_C0
    assert (colour - colour_back).abs().max() <= (colour.max() - colour.min()) / 255 / 2 + 1e-5
    inside = ref.features_rest.abs() < 3.9
    assert (back.features_rest - ref.features_rest)[inside].abs().max() <= 8 / 256 + 1e-5
    unit = torch.nn.functional.normalize(ref.quats, dim=-1)
    assert (unit * back.quats).sum(-1).abs().min() > 0.999


def test_bytes_follow_the_playcanvas_layout(tmp_path):
    n = CHUNK + 10
    generator = torch.Generator().manual_seed(0)
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0  # identity: w is the largest component, the other three sit at the middle code (512)
    g = CompactGaussians.from_viewer_fields(
        means=torch.rand(n, 3, generator=generator),
        log_scales=torch.full((n, 3), -4.0),
        quats=quats,
        alphas=torch.full((n,), 1.0),
        sh_dc=torch.zeros(n, 3),
        sh_rest=torch.zeros(n, 3, 3),
    )
    write_compressed_ply(tmp_path / "s.compressed.ply", g)
    data = (tmp_path / "s.compressed.ply").read_bytes()
    header, body = data.split(b"end_header\n")
    lines = header.decode().splitlines()
    assert "element chunk 2" in lines and f"element vertex {n}" in lines and f"element sh {n}" in lines
    assert len(body) == 2 * 18 * 4 + n * 16 + n * 9
    vertex = np.frombuffer(body, "<u4", n * 4, 2 * 18 * 4).reshape(n, 4)
    assert np.all(vertex[:, 1] == (512 << 20 | 512 << 10 | 512))
    assert np.all(vertex[:, 3] & 255 == 255)
    assert np.all(np.frombuffer(body, np.uint8, offset=2 * 18 * 4 + n * 16) == 128)  # SH rest 0 -> 0.5 * 256


def test_morton_order_makes_chunks_small_boxes():
    means = np.random.default_rng(0).random((16 * CHUNK, 3))
    chunked = means[morton_order(means)].reshape(16, CHUNK, 3)
    volume = np.prod(chunked.max(axis=1) - chunked.min(axis=1), axis=-1)
    assert volume.mean() < 0.25  # each chunk of a random cube is a small part of it (unsorted: about 0.98)


def test_decoded_scene_renders_like_the_model(model, tmp_path):
    camera = look_at_camera((2.0, 0.5, 1.0), size=32)
    saved = gaussians_of(model, drop_invisible=False)
    with torch.no_grad():
        reference = model.get_outputs_for_camera(camera)["rgb"]
        write_compressed_ply(tmp_path / "scene.compressed.ply", gaussians_of(model))
        apply_to_model(model, read_gaussians(tmp_path / "scene.compressed.ply"))
        decoded = model.get_outputs_for_camera(camera)["rgb"]
    apply_to_model(model, saved)
    psnr = -10 * torch.log10(((reference - decoded) ** 2).mean())
    assert psnr > 30.0


def test_truncated_or_plain_ply_is_named(model, tmp_path):
    write_compressed_ply(tmp_path / "scene.compressed.ply", gaussians_of(model))
    (tmp_path / "cut.compressed.ply").write_bytes((tmp_path / "scene.compressed.ply").read_bytes()[:-9])
    with pytest.raises(CompressedPlyError, match="cut.compressed.ply"):
        read_compressed_ply(tmp_path / "cut.compressed.ply")
    write_ply(tmp_path / "plain.ply", gaussians_of(model))
    with pytest.raises(CompressedPlyError, match="standard 3DGS PLY"):
        read_compressed_ply(tmp_path / "plain.ply")


def test_format_table_matches_the_option_and_suffixes():
    assert typing.get_args(FormatName) == tuple(FORMATS)  # names.py's list is the table's
    assert format_of("a/Scene.COMPRESSED.ply") == "compressed-ply" and format_of("scene.ply") == "ply"
    assert format_of("scene.gltf") is None and format_of("scene.spz.glb") == "glb-spz"


def test_save_command_writes_by_suffix_or_format(model, tmp_path, capsys):
    write_compressed_ply(tmp_path / "in.compressed.ply", gaussians_of(model))
    entrypoint(["save", "--input", str(tmp_path / "in.compressed.ply"), "--output", str(tmp_path / "out.spz")])
    entrypoint(["save", "--input", str(tmp_path / "out.spz"), "--output", str(tmp_path / "x.bin"), "--format", "splat"])
    assert (tmp_path / "x.bin").stat().st_size == 32 * gaussians_of(model).num_gaussians
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(["save", "--input", str(tmp_path / "out.spz"), "--output", str(tmp_path / "scene.gltf")])
    assert exit_info.value.code == 2 and ".compressed.ply" in capsys.readouterr().err


@pytest.mark.skipif(SPLAT_TRANSFORM is None, reason="PlayCanvas splat-transform not installed (npm)")
def test_splat_transform_reads_our_file(tmp_path):
    g = gaussians_of(textured_splat(sh_degree=3, num_points=600, seed=3))
    write_compressed_ply(tmp_path / "scene.compressed.ply", g)
    theirs = splat_transform_ply(tmp_path / "scene.compressed.ply", tmp_path)
    ours = read_compressed_ply(tmp_path / "scene.compressed.ply")
    assert len(theirs["means"]) == g.num_gaussians
    assert np.abs(theirs["means"] - ours.means.numpy()).max() < 1e-5
    assert np.abs(theirs["scales"] - ours.scales.numpy()).max() < 1e-4
    assert np.abs(theirs["rest"] - ours.features_rest.numpy()).max() < 1e-5
    assert np.abs((theirs["quats"] * ours.quats.numpy()).sum(axis=1)).min() > 0.9999


@pytest.mark.skipif(SPLAT_TRANSFORM is None, reason="PlayCanvas splat-transform not installed (npm)")
def test_we_read_splat_transforms_file(tmp_path):
    g = gaussians_of(textured_splat(sh_degree=3, num_points=600, seed=4))
    write_ply(tmp_path / "scene.ply", g)
    subprocess.run(
        [SPLAT_TRANSFORM, "-w", "-q", str(tmp_path / "scene.ply"), str(tmp_path / "theirs.compressed.ply")], check=True
    )
    theirs = read_compressed_ply(tmp_path / "theirs.compressed.ply")
    assert theirs.num_gaussians == g.num_gaussians
    match = torch.cdist(theirs.means, g.means).argmin(dim=1)  # their Morton order need not be ours
    assert len(set(match.tolist())) == g.num_gaussians
    extent = (g.means.max(0).values - g.means.min(0).values).max()
    assert (theirs.means - g.means[match]).abs().max() <= extent / 1023 / 2 + 1e-5
    assert (theirs.scales - g.scales[match]).abs().max() <= (g.scales.max() - g.scales.min()) / 1023 / 2 + 1e-4
    alpha = torch.sigmoid(g.opacities[match])
    assert (torch.sigmoid(theirs.opacities) - alpha).abs().max() <= 0.5 / 255 + 1e-5
    assert (theirs.features_rest - g.features_rest[match]).abs().max() <= 8 / 256 + 1e-5
    unit = torch.nn.functional.normalize(g.quats[match], dim=-1)
    assert (unit * theirs.quats).sum(-1).abs().min() > 0.999
