"""Niantic's SPZ file (version 3: one gzip stream, smallest-three quaternions), the compression behind glTF's
``KHR_gaussian_splatting``: web and phone viewers open it, our ``.compact`` only our decoder does.

Written from the format's reference description (nianticlabs/spz): positions as 24-bit fixed point with 12
fractional bits, log scales as ``(s + 10) * 16`` in a byte, opacity after the sigmoid in a byte, the SH DC as a
"wide" colour ``dc * 0.15 + 0.5`` in a byte, SH rounded to 5 significant bits (the reference encoder keeps 4 for
bands 2 and 3, which costs a small splat 0.5 dB; the zeroed low bits are what gzip then squeezes). SPZ stores the
RUB frame; a 3DGS PLY is read as RDF, so y and z are negated (positions, quaternions and the SH coefficients that
change sign), exactly as the reference and PlayCanvas' splat-transform convert our PLY. ``read_spz`` undoes all of
it, for round trips.
"""

from __future__ import annotations

import gzip
import struct
from functools import cache
from pathlib import Path

import numpy as np
import torch
from nerfstudio.models.splatfacto import RGB2SH

from distilled3dgs_ns.compression.compact_format import CompactGaussians
from distilled3dgs_ns.durable import write_atomic
from distilled3dgs_ns.errors import UserError
from distilled3dgs_ns.rasterization.sh import sh_bases

MAGIC = 0x5053474E  # "NGSP"
VERSION = 3
FRACTIONAL_BITS = 12
COLOR_SCALE = 0.15
SH1_BITS = 5
SH_REST_BITS = 5
"""Bits kept per SH coefficient of degree 1 and of higher bands. The reference encoder keeps 5 / 4; on the demo
student 4 bits for degrees 2-3 cost 0.53 dB of test PSNR and 5 bits 0.26 dB, for 11% more bytes (any SPZ reader
decodes either: the format stores 8-bit values)."""
_HEADER = struct.Struct("<IIIBBBB")
_HEADER_V4 = struct.Struct("<IIIBBBBI12x")
"""Version 4's plain header: magic, version, count, SH degree, fractional bits, flags, streams, table offset."""
_FLIP = np.array([1.0, -1.0, -1.0])
"""RDF (the PLY's frame) -> RUB (SPZ's): a half turn about x."""


class SpzError(UserError):
    """An SPZ file that cannot be written or read; the message names the file."""


@cache
def sh_flip_signs(degree: int, flip: tuple[float, float, float] = tuple(_FLIP)) -> tuple[float, ...]:
    """Sign of each SH rest coefficient under a half turn that negates two axes (``flip``, SPZ's y/z by default):
    every real SH basis is even or odd in each axis."""
    count = (degree + 1) ** 2
    direction = torch.tensor([[0.36, 0.48, 0.8]], dtype=torch.float64)  # no basis vanishes here
    turned = direction * torch.tensor(flip, dtype=torch.float64)
    here, flipped = sh_bases(count, direction)[0], sh_bases(count, turned)[0]
    return tuple(float(s) for s in torch.sign(here * flipped)[1:])


def _quantise_sh(values: np.ndarray, bits: int) -> np.ndarray:
    bucket = 1 << (8 - bits)
    q = np.round(values * 128.0) + 128.0
    return np.clip((q + bucket // 2) // bucket * bucket, 0, 255).astype(np.uint8)


def _pack_quats(quats_wxyz: np.ndarray) -> np.ndarray:
    """Smallest three: the index of the largest |component| in 2 bits, the others as sign + 9 bits of |q|/sqrt(1/2)."""
    q = quats_wxyz / np.linalg.norm(quats_wxyz, axis=1, keepdims=True)
    q = q[:, [1, 2, 3, 0]]  # SPZ orders xyzw
    largest = np.abs(q).argmax(axis=1)
    negate = q[np.arange(len(q)), largest] < 0
    packed = largest.astype(np.uint32)
    for i in range(4):
        skip = largest == i
        sign = ((q[:, i] < 0) ^ negate).astype(np.uint32)
        magnitude = np.floor(511.0 * np.abs(q[:, i]) / np.sqrt(0.5) + 0.5).astype(np.uint32)
        packed = np.where(skip, packed, (packed << 10) | (sign << 9) | magnitude)
    return packed.astype("<u4").view(np.uint8).reshape(-1, 4)


def _unpack_quats(data: np.ndarray) -> np.ndarray:
    packed = data.reshape(-1, 4).copy().view("<u4").reshape(-1).astype(np.uint32)
    largest = packed >> 30
    q = np.zeros((len(packed), 4))
    for i in (3, 2, 1, 0):
        skip = largest == i
        magnitude = (packed & 511) / 511.0 * np.sqrt(0.5)
        value = np.where((packed >> 9) & 1 == 1, -magnitude, magnitude)
        q[:, i] = np.where(skip, 0.0, value)
        packed = np.where(skip, packed, packed >> 10)
    rows = np.arange(len(q))
    q[rows, largest] = np.sqrt(np.clip(1.0 - (q**2).sum(axis=1), 0.0, None))
    return q[:, [3, 0, 1, 2]]  # back to wxyz


def spz_bytes(gaussians: CompactGaussians) -> bytes:
    """The whole SPZ file (gzip stream) for the Gaussians."""
    g = gaussians
    n = g.num_gaussians
    means = g.means.detach().double().cpu().numpy() * _FLIP
    limit = 2 ** (23 - FRACTIONAL_BITS)
    if n and np.abs(means).max() >= limit:
        raise SpzError(f"positions reach {np.abs(means).max():.0f}; SPZ holds |x| < {limit} (24-bit fixed point)")
    fixed = (np.round(means * (1 << FRACTIONAL_BITS)).astype(np.int64) & 0xFFFFFF).astype("<u4")
    positions = fixed.view(np.uint8).reshape(n, 3, 4)[:, :, :3]
    alphas = np.clip(np.round(torch.sigmoid(g.opacities).reshape(n).detach().cpu().numpy() * 255.0), 0, 255)
    dc = g.features_dc if g.sh_degree > 0 else RGB2SH(torch.sigmoid(g.features_dc))
    colors = np.clip(np.round(dc.detach().cpu().numpy() * (COLOR_SCALE * 255.0) + 127.5), 0, 255)
    scales = np.clip(np.round((g.scales.detach().cpu().numpy() + 10.0) * 16.0), 0, 255)
    quats = g.quats.detach().double().cpu().numpy() * np.array([1.0, 1.0, -1.0, -1.0])
    parts = [positions, alphas.astype(np.uint8), colors.astype(np.uint8), scales.astype(np.uint8), _pack_quats(quats)]
    if g.sh_degree > 0:
        rest = g.features_rest.detach().double().cpu().numpy() * np.array(sh_flip_signs(g.sh_degree))[:, None]
        sh = np.concatenate([_quantise_sh(rest[:, :3], SH1_BITS), _quantise_sh(rest[:, 3:], SH_REST_BITS)], axis=1)
        parts.append(sh)  # per Gaussian: coefficient-major, channels inner
    header = _HEADER.pack(MAGIC, VERSION, n, g.sh_degree, FRACTIONAL_BITS, 0, 0)
    payload = header + b"".join(np.ascontiguousarray(part).tobytes() for part in parts)
    return gzip.compress(payload, compresslevel=9, mtime=0)


def write_spz(path: Path | str, gaussians: CompactGaussians) -> int:
    """Write the Gaussians as an SPZ file; returns its size in bytes."""
    return write_atomic(path, spz_bytes(gaussians))


def read_spz(path: Path | str) -> CompactGaussians:
    """The Gaussians of an SPZ file (versions 2 to 4), back in the PLY's frame and splatfacto's parametrisation."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SpzError(f"{path}: not a readable SPZ file ({error}); write it again") from error
    return spz_gaussians(data, str(path))


def _sizes(n: int, degree: int, version: int) -> dict[str, int]:
    """Bytes per Gaussian of each attribute, in file order."""
    rest_count = (degree + 1) ** 2 - 1
    quat_bytes = 4 if version >= 3 else 3
    return {"positions": 9, "alphas": 1, "colors": 3, "scales": 3, "rotations": quat_bytes, "sh": rest_count * 3}


def _version_four(data: bytes, source: str) -> CompactGaussians:
    """Version 4: a plain 32-byte header, optional extension records, a table of (compressed, raw) sizes and one
    zstd stream per attribute (none for an empty one). Needs the ``zstandard`` package (PyPI)."""
    try:
        import zstandard
    except ImportError:
        raise SpzError(f"{source}: SPZ version 4 is zstd-compressed; pip install zstandard to read it") from None
    magic, version, n, degree, fractional_bits, _, streams, table = _HEADER_V4.unpack_from(data)
    if degree > 3:
        raise SpzError(f"{source}: SH degree {degree}; our models hold at most 3 (convert it with -H 3 first)")
    sizes = {name: size for name, size in _sizes(n, degree, version).items() if size}
    if streams != len(sizes) or len(data) < table + 16 * streams:
        raise SpzError(f"{source}: {streams} streams where SH degree {degree} has {len(sizes)}; write it again")
    offset, parts = table + 16 * streams, {}
    decompressor = zstandard.ZstdDecompressor()
    for k, (name, size) in enumerate(sizes.items()):
        packed, raw_length = struct.unpack_from("<QQ", data, table + 16 * k)
        try:
            raw = decompressor.decompress(data[offset : offset + packed], max_output_size=raw_length)
        except zstandard.ZstdError as error:
            raise SpzError(f"{source}: the {name} stream does not decompress ({error}); write it again") from None
        if len(raw) != n * size:
            raise SpzError(f"{source}: the {name} stream holds {len(raw)} bytes, not {n * size}; write it again")
        parts[name] = np.frombuffer(raw, np.uint8).reshape(n, size)
        offset += packed
    parts.setdefault("sh", np.zeros((n, 0), np.uint8))
    return _decode(parts, n, degree, version, fractional_bits)


def spz_gaussians(data: bytes, source: str) -> CompactGaussians:
    """The Gaussians of SPZ bytes (a file's, or a glTF buffer's), named ``source`` in errors: versions 2 and 3
    (one gzip stream) and 4 (zstd streams)."""
    if len(data) >= _HEADER_V4.size and _HEADER_V4.unpack_from(data)[:2] == (MAGIC, 4):
        return _version_four(data, source)
    try:
        raw = gzip.decompress(data)
    except (OSError, EOFError) as error:
        raise SpzError(f"{source}: not a readable SPZ file ({error}); write it again") from error
    if len(raw) < _HEADER.size:
        raise SpzError(f"{source}: too short for an SPZ header; write it again")
    magic, version, n, degree, fractional_bits, _, _ = _HEADER.unpack_from(raw)
    if magic != MAGIC or version not in (2, 3) or degree > 3:
        raise SpzError(
            f"{source}: not an SPZ file of version 2 or 3 with SH degree <= 3 (magic {magic:#x}, v{version})"
        )
    sizes = _sizes(n, degree, version)
    if len(raw) != _HEADER.size + n * sum(sizes.values()):
        raise SpzError(f"{source}: {len(raw)} bytes do not hold {n} Gaussians of SH degree {degree}; write it again")
    offset, parts = _HEADER.size, {}
    for name, size in sizes.items():
        parts[name] = np.frombuffer(raw, np.uint8, n * size, offset).reshape(n, size)
        offset += n * size
    return _decode(parts, n, degree, version, fractional_bits)


def _decode(parts: dict[str, np.ndarray], n: int, degree: int, version: int, fractional_bits: int) -> CompactGaussians:
    p = parts["positions"].reshape(n, 3, 3).astype(np.int64)
    fixed = p[..., 0] | (p[..., 1] << 8) | (p[..., 2] << 16)
    fixed = np.where(fixed >= 1 << 23, fixed - (1 << 24), fixed)
    means = fixed / float(1 << fractional_bits) * _FLIP
    if version >= 3:
        quats = _unpack_quats(parts["rotations"])
    else:  # first three of xyzw, w recovered as positive
        xyz = parts["rotations"] / 127.5 - 1.0
        quats = np.concatenate([np.sqrt(np.clip(1.0 - (xyz**2).sum(axis=1, keepdims=True), 0, None)), xyz], axis=1)
    quats = quats * np.array([1.0, 1.0, -1.0, -1.0])
    dc = torch.from_numpy((parts["colors"] / 255.0 - 0.5) / COLOR_SCALE).float()
    rest = np.zeros((n, (degree + 1) ** 2 - 1, 3))
    if degree > 0:
        rest = (parts["sh"].reshape(n, -1, 3) - 128.0) / 128.0 * np.array(sh_flip_signs(degree))[:, None]
    return CompactGaussians.from_viewer_fields(
        means=torch.from_numpy(means),
        log_scales=torch.from_numpy(parts["scales"] / 16.0 - 10.0),
        quats=torch.from_numpy(quats),
        alphas=torch.from_numpy(parts["alphas"] / 255.0),
        sh_dc=dc,
        sh_rest=torch.from_numpy(rest),
    )
