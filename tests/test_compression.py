"""The compact format: K-means codebook, fp16 + VQ encoding, the checked file format, PLY decoding (nerfstudio's
exporter layout), rendering a decoded file, fine-tuning with the assignment fixed, and the CLI's errors."""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import look_at_camera, make_model, textured_splat

from distilled3dgs_ns.compression import (
    CompactFormatError,
    CompactGaussians,
    CompactOptions,
    FinetuneOptions,
    VQOptions,
    apply_to_model,
    default_codebook_size,
    encode_gaussians,
    export_compact,
    finetune_compact,
    gaussians_of,
    model_params,
    nearest_codes,
    quantise,
    read_compact,
    read_header,
    train_codebook,
    write_compact,
    write_ply,
)
from distilled3dgs_ns.compression import codebook as codebook_module
from distilled3dgs_ns.compression.cli import entrypoint
from distilled3dgs_ns.compression.compact_format import FORMAT_VERSION, MAGIC
from distilled3dgs_ns.portable_splatfacto import PortableSplatfactoModelConfig

CAMERAS = [(2.0, 0.5, 1.0), (-1.5, 1.5, 0.8), (0.3, -2.0, 1.2)]
ROTATION_DOT = 1 - 2e-4
"""|dot| of a stored rotation with its original, at least. A step is sqrt(1/2) / 63 = 0.0112: three components off by
at most 0.0056 each, and the left-out one, recomputed from them, by at most 3 * 0.5 * 0.0056 / 0.5 = 0.0168 (all four
0.5), give 1 - (3 * 0.0056^2 + 0.0168^2) / 2 = 1 - 1.9e-4; near-ties moved a step (see ``encode_rotations``) stay
within it (worst of 200k random rotations: 1 - 1.5e-4)."""


def _scores(model) -> torch.Tensor:
    """Any deterministic significance stand-in: the sigmoid opacity."""
    return torch.sigmoid(model.gauss_params["opacities"].detach()).view(-1)


def _encode(model, **options) -> tuple[CompactGaussians, dict]:
    return encode_gaussians(model_params(model), model.config.sh_degree, _scores(model), VQOptions(**options), False)


def _render(model, position) -> torch.Tensor:
    return model.get_outputs_for_camera(look_at_camera(position, size=32))["rgb"]


# ------------------------------------------------------------------------------------------------------ k-means


def test_nearest_codes_matches_brute_force_across_blocks(monkeypatch):
    generator = torch.Generator().manual_seed(1)
    vectors, codes = torch.randn(500, 7, generator=generator), torch.randn(33, 7, generator=generator)
    monkeypatch.setattr(codebook_module, "DISTANCE_BLOCK_ELEMENTS", 33 * 40)  # 13 blocks of 40 rows
    indices, distances = nearest_codes(vectors, codes)
    expected = torch.cdist(vectors.double(), codes.double()).pow(2)
    assert torch.equal(indices, expected.argmin(dim=1))
    assert torch.allclose(distances.double(), expected.min(dim=1).values, rtol=1e-5, atol=1e-6)


def test_kmeans_recovers_well_separated_clusters():
    generator = torch.Generator().manual_seed(2)
    centres = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]])
    labels = torch.arange(4).repeat_interleave(50)
    vectors = centres[labels] + 0.1 * torch.randn(200, 3, generator=generator)
    result = train_codebook(vectors, 4, seed=0, progress=False)
    for cluster in range(4):  # each cluster is one code, and that code sits on the cluster's centre
        codes = result.assignment[labels == cluster].unique()
        assert codes.numel() == 1
        assert torch.allclose(result.codes[codes[0]], centres[cluster], atol=0.05)
    assert result.assignment.unique().numel() == 4
    assert result.iterations < 20  # the assignment stopped changing


def test_kmeans_distortion_never_increases_and_is_deterministic():
    vectors = torch.randn(600, 12, generator=torch.Generator().manual_seed(3))
    first = train_codebook(vectors, 24, iterations=15, seed=7, progress=False)
    history = torch.tensor(first.distortion)
    assert len(history) >= 3 and history[-1] < history[0]
    assert (history[1:] <= history[:-1] * (1 + 1e-6)).all(), history
    again = train_codebook(vectors, 24, iterations=15, seed=7, progress=False)
    assert torch.equal(first.codes, again.codes) and torch.equal(first.assignment, again.assignment)
    other = train_codebook(vectors, 24, iterations=15, seed=8, progress=False)
    assert not torch.equal(first.codes, other.codes)
    _, distances = nearest_codes(vectors, first.codes)  # reported distortion is the true mean squared error
    assert first.distortion[-1] == pytest.approx(float(distances.mean()), rel=1e-5)


def test_empty_cluster_takes_the_farthest_vector():
    vectors = torch.tensor([[0.0], [0.1], [5.0], [9.0]])
    assignment = torch.tensor([0, 0, 1, 1])  # code 2 is empty
    distances = torch.tensor([0.0, 0.01, 4.0, 4.0])
    codes = codebook_module._update_codes(vectors, assignment, distances, 3)
    assert codes[0].item() == pytest.approx(0.05) and codes[1].item() == pytest.approx(7.0)
    assert codes[2].item() == 5.0  # the first of the two farthest vectors (stable order)


def test_kmeans_with_more_codes_than_distinct_vectors():
    vectors = torch.randn(5, 4, generator=torch.Generator().manual_seed(4)).repeat(20, 1)
    result = train_codebook(vectors, 8, seed=0, progress=False)
    assert torch.isfinite(result.codes).all()
    assert torch.allclose(result.codes[result.assignment], vectors, atol=1e-6) and result.distortion[-1] < 1e-12


def test_default_codebook_size():
    assert default_codebook_size(0) == 0
    assert default_codebook_size(5) == 5  # never more codes than vectors
    assert default_codebook_size(1600) == 120  # three per square root
    assert default_codebook_size(10_000_000) == 8192


# ----------------------------------------------------------------------------------------------------- encoding


def _interleave_slowly(x: int, y: int, z: int, bits: int) -> int:
    """Morton code bit by bit, the textbook way: bit i of x, y, z to bits 3i, 3i + 1, 3i + 2."""
    return sum(((v >> i) & 1) << (3 * i + axis) for i in range(bits) for axis, v in enumerate((x, y, z)))


def test_morton_codes_interleave_bits_and_invert():
    generator = np.random.default_rng(3)
    for bits in (12, 21):
        cells = generator.integers(0, 1 << bits, size=(50, 3))
        codes = quantise.morton_codes(cells, bits)
        assert [int(c) for c in codes] == [_interleave_slowly(*map(int, cell), bits) for cell in cells]
        assert np.array_equal(quantise.morton_cells(codes, bits), cells)


def test_rotations_in_three_bytes_keep_the_rotation():
    quats = torch.randn(500, 4, generator=torch.Generator().manual_seed(2)).numpy()
    quats[:3] = [[0, 0, 0, 1], [-1, 0, 0, 0], [0.5, -0.5, 0.5, -0.5]]  # axis-aligned, negative, four-way tie
    packed = quantise.encode_rotations(quats)
    decoded = quantise.decode_rotations(packed)
    assert packed.shape == (500, 3) and packed.dtype == np.uint8
    unit = quats / np.linalg.norm(quats, axis=1, keepdims=True)
    assert np.abs((decoded * unit).sum(axis=1)).min() > ROTATION_DOT
    assert np.array_equal(decoded[:2], [[0, 0, 0, 1], [1, 0, 0, 0]])  # axis-aligned stays exact
    many = torch.randn(20_000, 4, generator=torch.Generator().manual_seed(0)).numpy()  # ~100 near-ties among them
    once = quantise.encode_rotations(many)
    assert np.array_equal(quantise.encode_rotations(quantise.decode_rotations(once)), once)  # a read file re-encodes
    assert np.allclose(np.linalg.norm(decoded, axis=1), 1, atol=1e-6)


def _original_in_file_order(params: dict, keep: torch.Tensor, decoded: CompactGaussians) -> dict:
    """The model's visible Gaussians in the order the file holds them (stable Morton order of their cells)."""
    visible = {name: value[keep] for name, value in params.items()}
    order = np.argsort(quantise.position_codes(visible["means"].numpy(), decoded.quantisation), kind="stable")
    return {name: value[torch.from_numpy(order)] for name, value in visible.items()}


def _half_steps(decoded: CompactGaussians) -> dict[str, torch.Tensor]:
    """Half a quantisation step of each field, the largest error rounding may make."""
    q = decoded.quantisation
    position = (torch.tensor(q.position_high) - torch.tensor(q.position_low)) / (2**q.position_bits - 1)
    return {
        "means": position / 2,
        "scales": torch.tensor((q.scale_range[1] - q.scale_range[0]) / 255 / 2),
        "opacities": torch.tensor((q.opacity_range[1] - q.opacity_range[0]) / 255 / 2),
        "features_dc": (torch.tensor(q.dc_high) - torch.tensor(q.dc_low)) / 255 / 2,
        "features_rest": torch.tensor(q.sh_max).reshape(-1, 3) / 127 / 2,
    }


def test_round_trip_without_vq_is_exact_and_within_half_a_step(tmp_path):
    model = textured_splat()
    params = model_params(model)
    gaussians, figures = _encode(model, vq_share=0.0)
    assert figures["num_dropped_invisible"] == 5 and gaussians.num_gaussians == 295 and gaussians.num_vq == 0
    path = tmp_path / "scene.compact"
    for compression in ("none", "zlib", "lzma"):
        write_compact(path, gaussians, compression)
        decoded = read_compact(path)
        for name, value in gaussians.params().items():  # pack returns what the file holds
            assert torch.equal(getattr(decoded, name), value), (compression, name)
    assert decoded.quantisation == gaussians.quantisation and decoded.metadata == {} and decoded.sh_degree == 3
    keep = params["opacities"].view(-1) > -6
    original = _original_in_file_order(params, keep, decoded)
    for name, bound in _half_steps(decoded).items():
        error = (getattr(decoded, name) - original[name]).abs()
        assert (error <= bound * (1 + 1e-5) + 1e-7).all(), (name, float((error - bound).max()))
    unit = original["quats"] / original["quats"].norm(dim=-1, keepdim=True)
    assert (decoded.quats * unit).sum(dim=-1).abs().min() > ROTATION_DOT
    assert decoded.quantisation.position_bits == quantise.position_bits(
        original["means"].numpy(), original["scales"].numpy()
    )
    write_compact(path, gaussians_of(model))  # the model's own Gaussians: the same file
    assert read_compact(path).quantisation == decoded.quantisation


def _gaussians(means: torch.Tensor, log_scale: float) -> CompactGaussians:
    n = means.shape[0]
    return CompactGaussians.from_viewer_fields(
        means, torch.full((n, 3), log_scale), torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1), torch.full((n,), 0.5),
        torch.zeros(n, 3), torch.zeros(n, 3, 3),
    )  # fmt: skip


def test_position_bits_follow_the_gaussians_and_float32(tmp_path):
    def bits(gaussians: CompactGaussians) -> int:
        write_compact(tmp_path / "bits.compact", gaussians)
        return read_header(tmp_path / "bits.compact")["quantisation"]["position_bits"]

    cube = torch.rand(200, 3, generator=torch.Generator().manual_seed(4))
    assert bits(_gaussians(cube, math.log(0.05))) == quantise.MIN_POSITION_BITS
    assert bits(_gaussians(cube, math.log(1e-4))) == 18  # step <= 1e-4 / 16 in a unit cube: 160k cells
    far = _gaussians(cube * 1e-3 + 1e4, math.log(1e-9))  # float32 holds 1e4 to ~1e-3: no finer grid than that
    assert bits(far) < quantise.MAX_POSITION_BITS
    for name, gaussians in [("far", far), ("one", _gaussians(torch.tensor([[0.3, -2.0, 7.0]]), 0.0))]:
        write_compact(tmp_path / f"{name}.compact", gaussians)
        decoded = read_compact(tmp_path / f"{name}.compact")
        assert (decoded.means - gaussians.means).abs().max() <= 1e-3, name
        write_compact(tmp_path / f"{name}2.compact", decoded)  # a read file writes the same bytes again
        assert (tmp_path / f"{name}2.compact").read_bytes() == (tmp_path / f"{name}.compact").read_bytes(), name


def test_vq_rows_come_from_the_codebook_and_the_rest_is_int8(tmp_path):
    model = textured_splat()
    params = model_params(model)
    gaussians, figures = _encode(model, vq_share=0.5, codebook_size=16)
    write_compact(tmp_path / "vq.compact", gaussians)
    decoded = read_compact(tmp_path / "vq.compact")
    assert decoded.num_vq == figures["num_vq"] == round(0.5 * 295) and decoded.codebook_size == 16
    assert torch.equal(decoded.vq_mask, gaussians.vq_mask) and torch.equal(decoded.indices, gaussians.indices)
    assert torch.equal(decoded.codebook, gaussians.codebook)
    assert torch.equal(decoded.features_rest[decoded.vq_mask], decoded.codebook[decoded.indices])
    assert [s["dtype"] for s in read_header(tmp_path / "vq.compact")["sections"]][-1] == "|u1"
    keep = params["opacities"].view(-1) > -6
    original = _original_in_file_order({**params, "score": _scores(model)}, keep, decoded)
    scores = original["score"]
    assert scores[decoded.vq_mask].max() <= scores[~decoded.vq_mask].min()  # the least significant are quantised
    half_step = _half_steps(decoded)["features_rest"]
    rest = original["features_rest"]
    assert ((decoded.features_rest[~decoded.vq_mask] - rest[~decoded.vq_mask]).abs() <= half_step + 1e-7).all()
    # each quantised vector sits on its nearest code (up to the codes' int8 rounding)
    vectors = rest[decoded.vq_mask].flatten(1)
    error = (decoded.features_rest[decoded.vq_mask].flatten(1) - vectors).pow(2).sum(dim=1)
    _, nearest = nearest_codes(vectors, decoded.codebook.flatten(1))
    assert (error <= nearest + 45 * float(half_step.max()) ** 2 + 1e-3 * nearest.mean()).all()
    assert figures["vq_rmse"] == pytest.approx(float((error.sum() / error.numel() / 45).sqrt()), rel=0.02)


def test_format_one_files_still_read():
    """``data/format1.compact`` was written by the float16 format (0a0c5fc's writer) from this seeded model."""
    params = model_params(textured_splat(sh_degree=1, num_points=40, seed=7))
    decoded = read_compact(Path(__file__).parent / "data" / "format1.compact")
    keep = params["opacities"].view(-1) > -6
    assert decoded.num_gaussians == int(keep.sum()) == 35 and decoded.num_vq == 18 and decoded.codebook_size == 4
    assert decoded.quantisation is None and decoded.sh_degree == 1
    for name in ("means", "scales", "opacities", "features_dc"):
        assert torch.allclose(getattr(decoded, name), params[name][keep], rtol=2**-10, atol=1e-3), name
    rest = params["features_rest"][keep]
    assert torch.allclose(decoded.features_rest[~decoded.vq_mask], rest[~decoded.vq_mask], rtol=2**-10, atol=1e-4)
    assert torch.equal(decoded.features_rest[decoded.vq_mask], decoded.codebook[decoded.indices])


def test_sh_degree_zero_and_empty_models_round_trip(tmp_path):
    model = textured_splat(sh_degree=0)
    gaussians, figures = _encode(model, vq_share=0.6)
    assert figures["num_vq"] == 0 and gaussians.features_rest.shape == (295, 0, 3)
    write_compact(tmp_path / "sh0.compact", gaussians)
    assert torch.equal(read_compact(tmp_path / "sh0.compact").features_dc, gaussians.features_dc)
    empty = textured_splat(num_points=5)  # all five are invisible
    gaussians, _ = _encode(empty, vq_share=0.6)
    write_compact(tmp_path / "empty.compact", gaussians)
    assert read_compact(tmp_path / "empty.compact").num_gaussians == 0
    nothing = {name: value[:0] for name, value in model_params(empty).items()}
    gaussians, figures = encode_gaussians(nothing, 3, torch.zeros(0), VQOptions(), progress=False)
    write_compact(tmp_path / "nothing.compact", gaussians)
    assert figures["num_gaussians"] == 0 and read_compact(tmp_path / "nothing.compact").num_gaussians == 0


def test_codebooks_past_65536_codes_store_uint32_indices(tmp_path):
    codebook = torch.randn(70_000, 3, 3, generator=torch.Generator().manual_seed(5))
    indices = torch.tensor([69_999, 0, 65_536])
    gaussians = CompactGaussians(
        means=torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]),
        scales=torch.zeros(3, 3),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(3, 1),
        opacities=torch.zeros(3, 1),
        features_dc=torch.zeros(3, 3),
        features_rest=codebook[indices],
        sh_degree=1,
        vq_mask=torch.ones(3, dtype=torch.bool),
        codebook=codebook,
        indices=indices,
    )
    write_compact(tmp_path / "big.compact", gaussians)
    assert [s["dtype"] for s in read_header(tmp_path / "big.compact")["sections"]][-1] == "<u4"
    decoded = read_compact(tmp_path / "big.compact")
    assert torch.equal(decoded.indices, indices)  # already in Morton order: x, then y
    assert torch.equal(decoded.features_rest, decoded.codebook[indices])
    assert (decoded.codebook - codebook).abs().max() <= codebook.abs().max() / 127 / 2 + 1e-6


# ------------------------------------------------------------------------------------------- damaged files


def _header_of(data: bytes) -> tuple[dict, int]:
    length = struct.unpack_from("<I", data, 10)[0]
    return json.loads(data[14 : 14 + length]), 14 + length + 4


def _with_header(data: bytes, header: dict, version: int = FORMAT_VERSION) -> bytes:
    """``data`` with another header, its checksum recomputed: a file that lies consistently."""
    _, payload_start = _header_of(data)
    text = json.dumps(header).encode()
    head = MAGIC + struct.pack("<HI", version, len(text)) + text
    return head + struct.pack("<I", zlib.crc32(head)) + data[payload_start:]


@pytest.fixture(scope="module")
def good_file(tmp_path_factory) -> bytes:
    gaussians, _ = _encode(textured_splat(), vq_share=0.5, codebook_size=8)
    path = tmp_path_factory.mktemp("good") / "good.compact"
    write_compact(path, gaussians, "zlib")
    return path.read_bytes()


def _damaged(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "damaged.compact"
    path.write_bytes(data)
    with pytest.raises(CompactFormatError) as error:
        read_compact(path)
    message = str(error.value)
    assert message.startswith(str(path)) and ";" in message  # the file, the problem; what to do
    return message


@pytest.mark.parametrize("cut", [0, 5, 13, 40, -1000, -1])
def test_truncated_files_are_refused(tmp_path, good_file, cut):
    length = cut if cut >= 0 else len(good_file) + cut
    message = _damaged(tmp_path, good_file[:length])
    assert ("truncated" in message or "empty" in message) and "re-export" in message


def test_flipped_bytes_fail_the_checksums(tmp_path, good_file):
    _, payload_start = _header_of(good_file)
    for position, what in [(20, "header"), (payload_start + 100, "payload"), (-3, "payload")]:
        data = bytearray(good_file)
        data[position] ^= 0x10
        assert f"{what} checksum mismatch" in _damaged(tmp_path, bytes(data))


def test_wrong_magic_ply_and_future_version_are_named(tmp_path, good_file):
    assert "not a distilled3dgs compact file" in _damaged(tmp_path, b"GARBAGE!" + good_file[8:])
    assert "PLY file" in _damaged(tmp_path, b"ply\nformat binary_little_endian 1.0\n")
    header, _ = _header_of(good_file)
    message = _damaged(tmp_path, _with_header(good_file, header, version=FORMAT_VERSION + 1))
    assert f"version {FORMAT_VERSION + 1}" in message and "upgrade" in message


@pytest.mark.parametrize(
    "lie",
    [
        {"num_gaussians": 296},
        {"num_vq": 140},
        {"codebook_size": 9},
        {"sh_degree": 2},
        {"payload_bytes": 1},
        {"compression": "brotli"},
        {"quantisation": None},
        {"quantisation": {"position_bits": 30}},
        "position_bits",
        "low above high",
        "sh_max short",
        {"num_vq": -1},
    ],
)
def test_headers_lying_about_counts_are_refused(tmp_path, good_file, lie):
    header, _ = _header_of(good_file)
    q = header["quantisation"]
    lie = (
        {
            "position_bits": {"quantisation": {**q, "position_bits": 64}},
            "low above high": {"quantisation": {**q, "scale_range": [1.0, -1.0]}},
            "sh_max short": {"quantisation": {**q, "sh_max": q["sh_max"][:-1]}},
        }.get(lie, lie)
        if isinstance(lie, str)
        else lie
    )
    assert "inconsistent header" in _damaged(tmp_path, _with_header(good_file, {**header, **lie}))


def test_consistent_lie_is_caught_by_the_payload_length(tmp_path, good_file):
    """Counts, sections and sizes all claim 300 Gaussians (the file holds 295): only the payload can tell."""
    header, _ = _header_of(good_file)
    shapes = {"vq_mask": [math.ceil(300 / 8)], "features_rest": [300 - header["num_vq"], 15, 3]}
    sections = [{**s, "shape": shapes.get(s["name"], s["shape"])} for s in header["sections"]]
    for section in sections:
        if section["name"] in ("morton_delta", "scales", "quats", "opacities", "features_dc"):
            section["shape"] = [300, *section["shape"][1:]]
    size = sum(np.dtype(s["dtype"]).itemsize * math.prod(s["shape"]) for s in sections)
    forged = {**header, "num_gaussians": 300, "sections": sections, "payload_bytes": size}
    assert "decompresses to" in _damaged(tmp_path, _with_header(good_file, forged))


def test_trailing_bytes_bad_mask_positions_and_nan_are_refused(tmp_path, good_file):
    assert "unexpected bytes" in _damaged(tmp_path, good_file + b"\0\0")
    # an uncompressed file whose VQ mask marks one Gaussian more than the header says, checksum recomputed
    gaussians, _ = _encode(textured_splat(), vq_share=0.5, codebook_size=8)
    path = tmp_path / "plain.compact"
    write_compact(path, gaussians, "none")
    data = bytearray(path.read_bytes())
    header, payload_start = _header_of(bytes(data))
    mask_offset = payload_start + 295 * (8 + 3 + 3 + 1 + 3)  # after the five per-Gaussian sections
    unmarked = int((~gaussians.vq_mask).nonzero()[0])
    data[mask_offset + unmarked // 8] |= 0x80 >> (unmarked % 8)
    header["payload_crc32"] = zlib.crc32(bytes(data[payload_start:]))
    assert "VQ mask marks 149 Gaussians, the header says 148" in _damaged(tmp_path, _with_header(bytes(data), header))
    # a position difference past the grid (the top byte plane of the uint64 differences), checksum recomputed
    data = bytearray(path.read_bytes())
    data[payload_start + 7 * 295 + 10] = 0x01
    header["payload_crc32"] = zlib.crc32(bytes(data[payload_start:]))
    assert "positions outside the" in _damaged(tmp_path, _with_header(bytes(data), header))
    gaussians.scales[3, 1] = float("nan")
    with pytest.raises(ValueError, match="scales has values that are not finite"):
        write_compact(path, gaussians)


def test_cli_reports_a_bad_file_in_one_line(tmp_path, capsys, good_file):
    bad = tmp_path / "bad.compact"
    bad.write_bytes(good_file[:-10])
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(["decode", "--input", str(bad), "--output", str(tmp_path / "out.ply")])
    assert exit_info.value.code == 2  # as distilled3dgs-eval and distilled3dgs-run for a bad input
    text = capsys.readouterr().err.strip()
    assert text.startswith("distilled3dgs-export: ") and str(bad) in text and "truncated" in text
    assert "Traceback" not in text
    assert len(text.splitlines()) == 1 and not (tmp_path / "out.ply").exists()
    with pytest.raises(SystemExit):
        entrypoint(["info", "--input", str(tmp_path / "missing.compact")])


# ---------------------------------------------------------------------------------------------- PLY, render


def _nerfstudio_layout(model) -> dict[str, np.ndarray]:
    """The columns ``ns-export gaussian-splat`` (nerfstudio/scripts/exporter.py) writes, built the way it builds them:
    from the model's ``shs_0`` / ``shs_rest`` properties, rest transposed to channel-major, quaternions and the other
    parameters raw, Gaussians with opacity logit < -5.5373 left out. (Its own code runs in test_e2e_compact.py;
    importing it here would cost most of this file's time budget.)"""
    with torch.no_grad():
        n = model.num_points
        columns = {"x": model.means[:, 0], "y": model.means[:, 1], "z": model.means[:, 2]}
        columns.update({name: torch.zeros(n) for name in ("nx", "ny", "nz")})
        columns.update({f"f_dc_{i}": model.shs_0[:, i] for i in range(3)})
        if model.config.sh_degree > 0:
            rest = model.shs_rest.transpose(1, 2).reshape(n, -1)
            columns.update({f"f_rest_{i}": rest[:, i] for i in range(rest.shape[1])})
        columns["opacity"] = model.opacities[:, 0]
        columns.update({f"scale_{i}": model.scales[:, i] for i in range(3)})
        columns.update({f"rot_{i}": model.quats[:, i] for i in range(4)})
        keep = model.opacities[:, 0] >= -5.5373
        return {name: column[keep].numpy() for name, column in columns.items()}


def _ply(path: Path) -> tuple[list[str], dict[str, np.ndarray], list[str]]:
    from plyfile import PlyData

    ply = PlyData.read(str(path))
    vertex = ply["vertex"]
    assert ply.text is False and ply.byte_order == "<"
    names = [p.name for p in vertex.properties]
    assert all(p.val_dtype in ("f4", "float32", "float") for p in vertex.properties)
    return names, {name: np.asarray(vertex[name]) for name in names}, ply.comments


@pytest.mark.parametrize("sh_degree", [3, 0])
def test_decoded_ply_has_nerfstudios_layout(tmp_path, sh_degree):
    model = textured_splat(sh_degree=sh_degree)
    theirs = _nerfstudio_layout(model)
    write_compact(tmp_path / "scene.compact", _encode(model, vq_share=0.0)[0])
    entrypoint(["decode", "--input", str(tmp_path / "scene.compact"), "--output", str(tmp_path / "decoded.ply")])
    names, ours, comments = _ply(tmp_path / "decoded.ply")
    assert names == list(theirs) and len(ours["x"]) == len(theirs["x"]) == 295
    assert any("Vertical Axis: z" in c for c in comments)
    expected = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    expected += [f"f_rest_{i}" for i in range(45 if sh_degree else 0)]
    assert names == [*expected, "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    # decode writes what the file holds (its accuracy against the model: test_round_trip_without_vq_...)
    write_ply(tmp_path / "direct.ply", read_compact(tmp_path / "scene.compact"))
    _, direct, _ = _ply(tmp_path / "direct.ply")
    for name in names:
        np.testing.assert_array_equal(ours[name], direct[name], err_msg=name)
    # the model's own Gaussians, unquantised, give nerfstudio's columns value for value (float32 rounding of the
    # sigmoid at SH degree 0 aside): what the one-command pipeline's PLY export writes
    write_ply(tmp_path / "model.ply", gaussians_of(model))
    names, exact, _ = _ply(tmp_path / "model.ply")
    theirs = _nerfstudio_layout(model)
    assert names == list(theirs)
    for name in names:
        np.testing.assert_allclose(exact[name], theirs[name], rtol=1e-6, atol=0 if sh_degree else 1e-7, err_msg=name)


def test_apply_to_model_renders_the_compact_scene(tmp_path):
    model = textured_splat()
    before = [_render(model, position) for position in CAMERAS]
    write_compact(tmp_path / "scene.compact", _encode(model, vq_share=0.0)[0])
    apply_to_model(model, read_compact(tmp_path / "scene.compact"))
    assert model.num_points == 295
    for position, expected in zip(CAMERAS, before, strict=True):
        rendered = _render(model, position)
        # 8-bit scales, opacities and colours: a few 1/255 levels at worst, a tenth of one on average
        assert (rendered - expected).abs().max() < 0.02 and (rendered - expected).abs().mean() < 1e-3
    with pytest.raises(ValueError, match="SH degree"):
        apply_to_model(textured_splat(sh_degree=1), read_compact(tmp_path / "scene.compact"))


# ----------------------------------------------------------------------------------------- export, fine-tune


def test_export_compact_figures_and_untouched_model(tmp_path):
    model = textured_splat()
    before = model_params(model)
    cameras = look_at_camera(CAMERAS[0], size=24)
    options = CompactOptions(vq_share=0.5, finetune=FinetuneOptions(steps=0))
    figures = export_compact(model, cameras, tmp_path / "a.compact", options, progress=False)
    assert all(torch.equal(before[name], value) for name, value in model_params(model).items())
    assert figures["num_gaussians"] == 295 and figures["num_vq"] == 148 and figures["codebook_size"] == 37
    assert figures["file_bytes"] == (tmp_path / "a.compact").stat().st_size and figures["compression_ratio"] > 2.5
    header = read_header(tmp_path / "a.compact")
    assert header["format_version"] == FORMAT_VERSION and header["metadata"]["options"]["vq_share"] == 0.5
    with pytest.raises(ValueError, match="training cameras"):
        export_compact(model, None, tmp_path / "b.compact", options, progress=False)
    with pytest.raises(ValueError, match="pipeline"):
        export_compact(model, cameras, tmp_path / "b.compact", CompactOptions(finetune=FinetuneOptions(steps=1)))


def test_finetuning_uses_the_models_cpu_thread_setting():
    """A model whose config fixes ``cpu_threads`` fine-tunes at that count, not at the load-following default
    (which never exceeds torch's count at start, so 3 on a 2-core machine can only come from the setting)."""
    before = torch.get_num_threads()
    model = make_model(PortableSplatfactoModelConfig(num_downscales=0, sh_degree=1, cpu_threads=3), 50, seed=0)
    camera = look_at_camera(CAMERAS[0], size=16)
    batch = {"image": torch.rand(16, 16, 3)}
    gaussians, _ = _encode(model, vq_share=1.0, codebook_size=4)
    seen: list[int] = []

    def view(step: int):
        seen.append(torch.get_num_threads())
        return camera, batch

    try:
        torch.set_num_threads(1)
        finetune_compact(model, gaussians, view, FinetuneOptions(steps=3), progress=False)
    finally:
        torch.set_num_threads(before)
    assert seen == [3, 3, 3]


def test_finetuning_keeps_the_assignment_and_lowers_the_loss():
    teacher = textured_splat()
    views = []
    for position in CAMERAS:
        camera = look_at_camera(position, size=24)
        views.append((camera, {"image": teacher.get_outputs_for_camera(camera)["rgb"]}))
    gaussians, _ = _encode(teacher, vq_share=1.0, codebook_size=4)
    student = textured_splat()
    tuned, losses = finetune_compact(
        student, gaussians, lambda step: views[step % len(views)], FinetuneOptions(steps=9), progress=False
    )
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    assert torch.equal(tuned.indices, gaussians.indices) and torch.equal(tuned.vq_mask, gaussians.vq_mask)
    assert not torch.equal(tuned.codebook, gaussians.codebook)
    assert torch.equal(tuned.features_rest[tuned.vq_mask], tuned.codebook[tuned.indices])
    assert torch.equal(student.gauss_params["features_rest"].detach(), tuned.features_rest)
