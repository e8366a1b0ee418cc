"""SOG and glTF (``KHR_gaussian_splatting``) export: quantisation bounds, the layout today's readers rely on, the
palette taken from a compact scene, the glTF frame, and independent readers where .ci/run installs them
(PlayCanvas splat-transform 3.x, Khronos' glTF validator, glTF-Transform)."""

from __future__ import annotations

import io
import json
import math
import struct
import subprocess
import zipfile

import numpy as np
import pytest
import torch
from helpers import SPLAT_TRANSFORM, look_at_camera, node_package, splat_transform_ply, textured_splat
from PIL import Image

from distilled3dgs_ns.compression import VQOptions, encode_gaussians
from distilled3dgs_ns.compression.compact_format import CompactGaussians
from distilled3dgs_ns.compression.formats import FORMATS, format_of, read_gaussians
from distilled3dgs_ns.compression.glb import (
    EXTENSION,
    SPZ_EXTENSION,
    GlbError,
    glb_attributes,
    read_glb,
    write_glb,
    write_spz_glb,
)
from distilled3dgs_ns.compression.model_io import apply_to_model, gaussians_of, model_params
from distilled3dgs_ns.compression.sog import SogError, palette_size, read_sog, scalar_codebook, write_sog
from distilled3dgs_ns.compression.spz import spz_bytes
from distilled3dgs_ns.rasterization.projection import quat_scale_to_covar

TOLERANCE = {"means": 2e-4, "quats": 0.995, "opacity": 0.5 / 255 + 1e-6}


@pytest.fixture(scope="module")
def model():
    return textured_splat(sh_degree=3, num_points=300)


def _unit(quats: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(quats.double(), dim=-1)


def _in_file_order(gaussians: CompactGaussians, decoded: CompactGaussians) -> CompactGaussians:
    """``gaussians`` in the order of ``decoded`` (SOG stores Morton order): matched by nearest position."""
    distances = torch.cdist(decoded.means.double(), gaussians.means.double())
    return gaussians.take(distances.argmin(dim=1))


def _psnr(model, gaussians: CompactGaussians) -> float:
    camera = look_at_camera((2.0, 0.5, 1.0), size=32)
    saved = gaussians_of(model)
    with torch.no_grad():
        reference = model.get_outputs_for_camera(camera)["rgb"]
        apply_to_model(model, gaussians)
        decoded = model.get_outputs_for_camera(camera)["rgb"]
    apply_to_model(model, saved)
    return float(-10 * torch.log10(((reference - decoded) ** 2).mean()))


# ------------------------------------------------------------------------------------------------------------ SOG


def test_scalar_codebook_is_sorted_and_nearest():
    values = np.random.default_rng(0).normal(size=(500, 3))
    codes, labels = scalar_codebook(values)
    assert codes.shape == (256,) and np.all(np.diff(codes) >= 0) and labels.shape == (500, 3)
    nearest = np.abs(values[..., None] - codes).argmin(axis=-1)
    assert np.abs(codes[labels] - values).max() <= np.abs(codes[nearest] - values).max() + 1e-6
    error = np.abs(codes[labels] - values)
    assert error.mean() < 0.006 and np.median(error) < 0.005  # 1500 values, 256 levels (the tails coarser)
    assert np.allclose([codes[0], codes[-1]], [values.min(), values.max()], rtol=1e-6)  # the extremes: codes
    few, few_labels = scalar_codebook(np.array([0.5, -1.0, 0.5]))
    assert set(few[few_labels].tolist()) == {0.5, -1.0}  # fewer values than codes: kept exactly


def test_sog_round_trip_is_within_the_formats_quantisation(model, tmp_path):
    g = gaussians_of(model)
    size = write_sog(tmp_path / "scene.sog", g)
    back = read_sog(tmp_path / "scene.sog")
    assert size == (tmp_path / "scene.sog").stat().st_size and back.num_gaussians == g.num_gaussians
    ours = _in_file_order(g, back)
    assert (back.means - ours.means).abs().max() < TOLERANCE["means"]
    assert (_unit(back.quats) * _unit(ours.quats)).sum(-1).abs().min() > TOLERANCE["quats"]
    alpha, alpha_back = torch.sigmoid(ours.opacities), torch.sigmoid(back.opacities)
    assert (alpha - alpha_back).abs().max() <= TOLERANCE["opacity"]
    assert (back.scales - ours.scales).abs().max() < 0.05
    assert (back.features_dc - ours.features_dc).abs().max() < 0.02
    assert back.features_rest.shape == ours.features_rest.shape


def test_sog_layout_is_what_the_readers_expect(model, tmp_path):
    g = gaussians_of(model)
    write_sog(tmp_path / "scene.sog", g)
    data = (tmp_path / "scene.sog").read_bytes()
    assert struct.unpack_from("<I", data, len(data) - 22)[0] == 0x06054B50  # no zip comment: the engine's reader
    with zipfile.ZipFile(tmp_path / "scene.sog") as bundle:
        names = bundle.namelist()
        meta = json.loads(bundle.read("meta.json"))
        images = {name: Image.open(io.BytesIO(bundle.read(name))) for name in names if name.endswith(".webp")}
    assert names[-1] == "meta.json" and meta["version"] == 2 and meta["count"] == g.num_gaussians
    assert len(meta["scales"]["codebook"]) == len(meta["sh0"]["codebook"]) == 256
    width, height = images["means_l.webp"].size
    assert width % 4 == 0 and height % 4 == 0 and width * height >= g.num_gaussians
    assert images["quats.webp"].mode == "RGBA"  # the others' alpha is 255 throughout: WebP may drop it
    assert meta["shN"]["bands"] == 3 and meta["shN"]["count"] == palette_size(g.num_gaussians)
    assert images["shN_centroids.webp"].size == (64 * 15, math.ceil(meta["shN"]["count"] / 64))
    tags = np.asarray(images["quats.webp"])[..., 3].reshape(-1)[: g.num_gaussians]
    assert set(np.unique(tags)) <= {252, 253, 254, 255}


def test_a_compact_scenes_codebook_becomes_the_palette(model, tmp_path):
    g, _ = encode_gaussians(model_params(model), 3, torch.ones(model.num_points), VQOptions(codebook_size=24), False)
    assert g.num_vq == g.num_gaussians and g.codebook_size == 24
    write_sog(tmp_path / "scene.sog", g)
    with zipfile.ZipFile(tmp_path / "scene.sog") as bundle:
        assert json.loads(bundle.read("meta.json"))["shN"]["count"] == 24
    back = read_sog(tmp_path / "scene.sog")
    ours = _in_file_order(g, back)
    # each Gaussian keeps its own code, up to the 256 levels of the palette's values
    assert len(torch.unique(back.features_rest.reshape(g.num_gaussians, -1), dim=0)) == 24
    for code in range(24):
        rows = back.features_rest[ours.indices == code]
        assert len(rows) == 0 or (rows == rows[0]).all()
    assert (back.features_rest - ours.features_rest).abs().mean() < 0.005


def test_decoded_sog_renders_like_its_compact_scene(model, tmp_path):
    g, _ = encode_gaussians(model_params(model), 3, torch.ones(model.num_points), VQOptions(codebook_size=64), False)
    write_sog(tmp_path / "scene.sog", g)
    saved = gaussians_of(model)
    apply_to_model(model, g)
    psnr = _psnr(model, read_sog(tmp_path / "scene.sog"))
    apply_to_model(model, saved)
    assert psnr > 30.0


def test_a_damaged_sog_is_named(model, tmp_path):
    write_sog(tmp_path / "scene.sog", gaussians_of(model))
    (tmp_path / "cut.sog").write_bytes((tmp_path / "scene.sog").read_bytes()[:-100])
    with pytest.raises(SogError, match="cut.sog: not a readable SOG bundle"):
        read_sog(tmp_path / "cut.sog")
    with pytest.raises(SogError, match="none"):
        write_sog(tmp_path / "empty.sog", gaussians_of(model).take(torch.zeros(0, dtype=torch.long)))


@pytest.mark.skipif(SPLAT_TRANSFORM is None, reason="PlayCanvas splat-transform not installed (npm)")
def test_splat_transform_reads_our_sog(model, tmp_path):
    write_sog(tmp_path / "scene.sog", gaussians_of(model))
    theirs = splat_transform_ply(tmp_path / "scene.sog", tmp_path)
    ours = read_sog(tmp_path / "scene.sog")
    assert len(theirs["means"]) == ours.num_gaussians == gaussians_of(model).num_gaussians
    assert np.abs(theirs["means"] - ours.means.numpy()).max() < 1e-5
    assert np.abs(theirs["scales"] - ours.scales.numpy()).max() < 1e-5
    assert np.abs(theirs["rest"] - ours.features_rest.numpy()).max() < 1e-5
    quats = theirs["quats"] / np.linalg.norm(theirs["quats"], axis=1, keepdims=True)
    assert np.abs((quats * _unit(ours.quats).numpy()).sum(axis=1)).min() > 0.9999


# ------------------------------------------------------------------------------------------------------------ glTF


def _document(path) -> dict:
    data = path.read_bytes()
    assert struct.unpack_from("<III", data)[::2] == (0x46546C67, len(data))
    length, kind = struct.unpack_from("<II", data, 12)
    assert kind == 0x4E4F534A and length % 4 == 0
    return json.loads(data[20 : 20 + length])


def test_glb_holds_the_model_exactly_in_gltfs_frame(model, tmp_path):
    g = gaussians_of(model)
    write_glb(tmp_path / "scene.glb", g)
    back = read_glb(tmp_path / "scene.glb")
    assert (back.means - g.means).abs().max() < 1e-6 and (back.scales - g.scales).abs().max() < 1e-5
    assert (_unit(back.quats) * _unit(g.quats)).sum(-1).abs().min() > 1 - 1e-6
    assert (back.features_rest - g.features_rest).abs().max() < 1e-6
    document = _document(tmp_path / "scene.glb")
    primitive = document["meshes"][0]["primitives"][0]
    assert primitive["mode"] == 0 and primitive["extensions"][EXTENSION]["kernel"] == "ellipse"
    assert document["extensionsUsed"] == [EXTENSION] and "extensionsRequired" not in document
    assert len(primitive["attributes"]) == 5 + 15  # position, rotation, scale, opacity, DC and 15 SH coefficients
    position = document["accessors"][primitive["attributes"]["POSITION"]]
    attributes = glb_attributes(g)
    assert np.allclose(position["min"], attributes["POSITION"].min(axis=0))
    # a half turn about z: x and y change sign, and the colour seen from every direction is kept
    assert np.allclose(attributes["POSITION"], g.means.numpy() * np.array([-1.0, -1.0, 1.0]), atol=1e-6)
    assert _psnr(model, back) > 60.0


def test_spz_glb_carries_the_spz_file(model, tmp_path):
    g = gaussians_of(model)
    size = write_spz_glb(tmp_path / "scene.spz.glb", g)
    spz = spz_bytes(g)
    assert size <= 1.1 * len(spz) + 4096  # the JSON of a tiny splat dominates; real ones stay within 1.1x
    document = _document(tmp_path / "scene.spz.glb")
    assert document["extensionsRequired"] == [EXTENSION, SPZ_EXTENSION]
    view = document["bufferViews"][0]
    data = (tmp_path / "scene.spz.glb").read_bytes()
    binary_start = 20 + struct.unpack_from("<I", data, 12)[0] + 8
    assert data[binary_start + view["byteOffset"] : binary_start + view["byteOffset"] + view["byteLength"]] == spz
    assert all("bufferView" not in accessor for accessor in document["accessors"])
    assert format_of("scene.spz.glb") == "glb-spz" and format_of("scene.glb") == "glb"
    assert _psnr(model, read_gaussians(tmp_path / "scene.spz.glb")) > 30.0


def test_a_foreign_glb_is_named(tmp_path):
    (tmp_path / "cube.glb").write_bytes(b"glTF" + b"\0" * 30)
    with pytest.raises(GlbError, match="cube.glb"):
        read_glb(tmp_path / "cube.glb")
    assert set(FORMATS) >= {"sog", "glb", "glb-spz"}


def _node(script: str, *args) -> str:
    return subprocess.run(["node", "-e", script, *map(str, args)], check=True, capture_output=True, text=True).stdout


@pytest.mark.skipif(node_package("gltf-validator") is None, reason="gltf-validator not installed (npm)")
@pytest.mark.parametrize("name", ["scene.glb", "scene.spz.glb"])
def test_khronos_validator_passes_our_glb(model, tmp_path, name):
    FORMATS[format_of(name)].write(tmp_path / name, gaussians_of(model))
    script = (
        f"require({json.dumps(str(node_package('gltf-validator')))})"
        ".validateBytes(new Uint8Array(require('fs').readFileSync(process.argv[1])), {ignoredIssues: "
        # the validator predates the extension: it rejects prefixed semantics and cannot know the extensions
        "['MESH_PRIMITIVE_INVALID_ATTRIBUTE', 'UNSUPPORTED_EXTENSION']})"
        ".then(report => console.log(JSON.stringify(report.issues)))"
    )
    issues = json.loads(_node(script, tmp_path / name))
    assert issues["numErrors"] == 0 and issues["numWarnings"] == 0, issues["messages"]


@pytest.mark.skipif(node_package("@gltf-transform/core") is None, reason="@gltf-transform/core not installed (npm)")
def test_gltf_transform_reads_every_attribute(model, tmp_path):
    g = gaussians_of(model)
    write_glb(tmp_path / "scene.glb", g)
    script = (
        f"import({json.dumps(str(node_package('@gltf-transform/core') / 'dist' / 'index.js'))})"
        ".then(async ({NodeIO}) => { const doc = await new NodeIO().read(process.argv[1]);"
        " const p = doc.getRoot().listMeshes()[0].listPrimitives()[0];"
        " console.log(JSON.stringify({mode: p.getMode(), attributes: Object.fromEntries(p.listSemantics()"
        ".map(s => [s, [p.getAttribute(s).getCount(), p.getAttribute(s).getElement(0, [])]]))})); })"
    )
    read = json.loads(_node(script, tmp_path / "scene.glb"))
    assert read["mode"] == 0
    expected = glb_attributes(g)
    assert set(read["attributes"]) == set(expected)
    for semantic, (count, first) in read["attributes"].items():
        assert count == g.num_gaussians and np.allclose(first, expected[semantic][0], atol=1e-6)


@pytest.mark.skipif(SPLAT_TRANSFORM is None, reason="PlayCanvas splat-transform not installed (npm)")
def test_our_glb_matches_splat_transforms_from_the_same_ply(model, tmp_path):
    g = gaussians_of(model)
    FORMATS["ply"].write(tmp_path / "scene.ply", g)
    subprocess.run([SPLAT_TRANSFORM, "-w", "-q", str(tmp_path / "scene.ply"), str(tmp_path / "theirs.glb")], check=True)
    write_glb(tmp_path / "ours.glb", g)
    theirs, ours = read_glb(tmp_path / "theirs.glb"), read_glb(tmp_path / "ours.glb")
    for name in ("means", "scales", "opacities", "features_dc", "features_rest"):
        assert torch.allclose(getattr(theirs, name), getattr(ours, name), atol=1e-5), name
    # the same Gaussians: splat-transform turns the rotations by the half turn, we conjugate by it (R -> F R F, which
    # differs by F on the right, i.e. on the axes of the scale matrix that F only flips)
    assert torch.allclose(_covariances(theirs), _covariances(ours), atol=1e-5)


def _covariances(g: CompactGaussians) -> torch.Tensor:
    return quat_scale_to_covar(g.quats.double(), torch.exp(g.scales.double()))
