"""PlayCanvas' compressed PLY (``.compressed.ply``): what SuperSplat, the PlayCanvas engine and most web viewers
load fastest, about 16 bytes per Gaussian plus 1 byte per SH coefficient, and still a PLY that PLY tools parse.

Written from the format as PlayCanvas' splat-transform reads it (read, not copied). Gaussians go in Morton order of
their positions, in chunks of 256; each chunk stores float32 bounds (position, log scale, colour) and each Gaussian
four uint32: position and log scale normalised to the chunk bounds at 11/10/11 bits, the quaternion as the index of
its largest component (2 bits) and the other three at 10 bits each (``q * sqrt(1/2) + 0.5``), and colour
``0.5 + SH_C0 * dc`` normalised to the chunk bounds with opacity after the sigmoid, 8 bits each. The SH rest
coefficients follow as one byte each (``(v / 8 + 0.5) * 256``, the PLY's channel-major order). The frame is the
PLY's, unchanged; ``read_compressed_ply`` undoes the rest, for round trips.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from distilled3dgs_ns.compression.compact_format import SH_C0, CompactGaussians
from distilled3dgs_ns.compression.ply import ply_properties
from distilled3dgs_ns.durable import write_atomic
from distilled3dgs_ns.errors import UserError

CHUNK = 256
CHUNK_FIELDS = tuple(
    f"{bound}_{name}"
    for group in (("x", "y", "z"), ("scale_x", "scale_y", "scale_z"), ("r", "g", "b"))
    for bound in ("min", "max")
    for name in group
)
"""The 18 float32 properties of a chunk, in file order."""
VERTEX_FIELDS = ("packed_position", "packed_rotation", "packed_scale", "packed_color")
OTHERS = np.array([[j for j in range(4) if j != i] for i in range(4)])
"""Row i: the three quaternion components kept when component i, the largest, is dropped."""
SCALE_LIMIT = 20.0
"""Chunk bounds of log scales are clipped here, as the reference writer does (a scale can be -inf)."""


class CompressedPlyError(UserError):
    """A compressed PLY that cannot be read; the message names the file."""


def _spread_bits(value: np.ndarray) -> np.ndarray:
    """10-bit integers with two zero bits inserted after each bit (for 30-bit Morton codes)."""
    v = value.astype(np.uint32)
    v = (v | (v << 16)) & 0x030000FF
    v = (v | (v << 8)) & 0x0300F00F
    v = (v | (v << 4)) & 0x030C30C3
    return (v | (v << 2)) & 0x09249249


def morton_order(means: np.ndarray) -> np.ndarray:
    """Indices that put Gaussians in Morton (Z-curve) order of their positions in the bounding box, so each chunk
    is a small box and its bounds are tight."""
    low, high = means.min(axis=0), means.max(axis=0)
    cells = np.clip((means - low) / np.maximum(high - low, 1e-12) * 1023.0, 0, 1023).astype(np.uint32)
    code = _spread_bits(cells[:, 0]) << 2 | _spread_bits(cells[:, 1]) << 1 | _spread_bits(cells[:, 2])
    return np.argsort(code, kind="stable")


def _unorm(value: np.ndarray, bits: int) -> np.ndarray:
    top = (1 << bits) - 1
    return np.clip(np.floor(value * top + 0.5), 0, top).astype(np.uint32)


def _normalise(value: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """``value`` [C, 256, 3] in its chunk's [low, high] ([C, 1, 3]), 0 where the range is empty."""
    span = high - low
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(span < 1e-5, 0.0, (value - low) / np.where(span < 1e-5, 1.0, span))
    return np.clip(t, 0.0, 1.0)


def _pack_111011(t: np.ndarray) -> np.ndarray:
    return _unorm(t[..., 0], 11) << 21 | _unorm(t[..., 1], 10) << 11 | _unorm(t[..., 2], 11)


def _pack_quats(quats_wxyz: np.ndarray) -> np.ndarray:
    q = quats_wxyz / np.linalg.norm(quats_wxyz, axis=-1, keepdims=True)
    largest = np.abs(q).argmax(axis=-1)
    q = q * np.where(np.take_along_axis(q, largest[..., None], -1) < 0, -1.0, 1.0)
    others = OTHERS[largest]  # [..., 3]
    kept = np.take_along_axis(q, others, -1) * math.sqrt(0.5) + 0.5
    packed = largest.astype(np.uint32) << 30
    for i, shift in enumerate((20, 10, 0)):
        packed |= _unorm(kept[..., i], 10) << shift
    return packed


def compressed_ply_bytes(gaussians: CompactGaussians) -> bytes:
    """The whole compressed PLY for the Gaussians."""
    columns = ply_properties(gaussians)
    n = gaussians.num_gaussians
    if n == 0:
        raise CompressedPlyError("a compressed PLY needs at least one Gaussian; this splat has none")

    def stack(*names: str) -> np.ndarray:
        return np.stack([columns[name] for name in names], axis=-1).astype(np.float64)

    order = morton_order(stack("x", "y", "z"))
    chunks = math.ceil(n / CHUNK)
    padded = np.concatenate([order, np.full(chunks * CHUNK - n, order[-1])])  # the last one repeats, as upstream

    def chunked(values: np.ndarray) -> np.ndarray:
        return values[padded].reshape(chunks, CHUNK, -1)

    position = chunked(stack("x", "y", "z"))
    scale = chunked(stack("scale_0", "scale_1", "scale_2"))
    colour = chunked(stack("f_dc_0", "f_dc_1", "f_dc_2") * SH_C0 + 0.5)
    alpha = 1.0 / (1.0 + np.exp(-chunked(stack("opacity"))[..., 0]))
    bounds, packed = [], []
    for values, limit in ((position, np.inf), (scale, SCALE_LIMIT), (colour, np.inf)):
        low = np.clip(values.min(axis=1, keepdims=True), -limit, limit)
        high = np.clip(values.max(axis=1, keepdims=True), -limit, limit)
        bounds += [low[:, 0], high[:, 0]]
        packed.append(_normalise(values, low, high))
    colour_bits = (
        _unorm(packed[2][..., 0], 8) << 24 | _unorm(packed[2][..., 1], 8) << 16 | _unorm(packed[2][..., 2], 8) << 8
    )
    vertex = np.stack(
        [
            _pack_111011(packed[0]),
            _pack_quats(chunked(stack("rot_0", "rot_1", "rot_2", "rot_3"))),
            _pack_111011(packed[1]),
            colour_bits | _unorm(alpha, 8),
        ],
        axis=-1,
    ).reshape(-1, 4)[:n]
    rest_names = [name for name in columns if name.startswith("f_rest_")]
    header = ["ply", "format binary_little_endian 1.0", "comment Generated by distilled3dgs_ns"]
    header += [f"element chunk {chunks}"] + [f"property float {name}" for name in CHUNK_FIELDS]
    header += [f"element vertex {n}"] + [f"property uint {name}" for name in VERTEX_FIELDS]
    body = [np.concatenate(bounds, axis=-1).astype("<f4").tobytes(), vertex.astype("<u4").tobytes()]
    if rest_names:
        header += [f"element sh {n}"] + [f"property uchar {name}" for name in rest_names]
        rest = stack(*rest_names)[order]
        body.append(np.clip(np.trunc((rest / 8.0 + 0.5) * 256.0), 0, 255).astype(np.uint8).tobytes())
    return ("\n".join(header) + "\nend_header\n").encode() + b"".join(body)


def write_compressed_ply(path: Path | str, gaussians: CompactGaussians) -> int:
    """Write the Gaussians as a PlayCanvas compressed PLY; returns its size in bytes."""
    return write_atomic(path, compressed_ply_bytes(gaussians))


def _parse_header(path: Path, data: bytes) -> tuple[list[tuple[str, int, list[str]]], int]:
    """``[(element, count, property names)]`` and the offset of the body; refuses anything but the layout above."""
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise CompressedPlyError(f"{path}: not a PLY file (no ply / end_header lines); write it again")
    elements: list[tuple[str, int, list[str]]] = []
    for line in data[:end].decode("ascii", "replace").splitlines()[1:]:
        words = line.split()
        if words[:1] == ["format"] and words[1:2] != ["binary_little_endian"]:
            raise CompressedPlyError(f"{path}: a {words[1]} PLY; compressed PLYs are binary little endian")
        if words[:1] == ["element"] and len(words) == 3 and words[2].isdigit():
            elements.append((words[1], int(words[2]), []))
        elif words[:1] == ["property"] and elements and len(words) == 3:
            elements[-1][2].append(words[2])
    names = [(name, props) for name, _, props in elements]
    if len(names) < 2 or names[0] != ("chunk", list(CHUNK_FIELDS)) or names[1] != ("vertex", list(VERTEX_FIELDS)):
        raise CompressedPlyError(
            f"{path}: not a compressed PLY with 18 chunk bounds (a standard 3DGS PLY is read as .ply, not here)"
        )
    return elements, end + len(b"end_header\n")


def read_compressed_ply(path: Path | str) -> CompactGaussians:
    """The Gaussians of a compressed PLY (with per-chunk colour bounds), in splatfacto's parametrisation."""
    path = Path(path)
    data = path.read_bytes()
    elements, offset = _parse_header(path, data)
    chunks, n = elements[0][1], elements[1][1]
    rest_count = len(elements[2][2]) if len(elements) > 2 else 0
    if chunks != math.ceil(n / CHUNK) or rest_count not in (0, 9, 24, 45):
        raise CompressedPlyError(f"{path}: {chunks} chunks and {rest_count} SH coefficients do not fit {n} Gaussians")
    expected = offset + chunks * len(CHUNK_FIELDS) * 4 + n * (16 + rest_count)
    if len(data) != expected:
        raise CompressedPlyError(f"{path}: {len(data)} bytes where {expected} were expected; write it again")
    bounds = np.frombuffer(data, "<f4", chunks * len(CHUNK_FIELDS), offset).reshape(chunks, 6, 3).astype(np.float64)
    offset += bounds.size * 4
    vertex = np.frombuffer(data, "<u4", n * 4, offset).reshape(n, 4)
    owner = np.arange(n) // CHUNK

    def unpack(bits: np.ndarray, group: int) -> np.ndarray:
        t = np.stack([(bits >> 21) / 2047.0, ((bits >> 11) & 1023) / 1023.0, (bits & 2047) / 2047.0], axis=-1)
        low, high = bounds[owner, 2 * group], bounds[owner, 2 * group + 1]
        return low + (high - low) * t

    colour_t = np.stack([((vertex[:, 3] >> s) & 255) / 255.0 for s in (24, 16, 8)], axis=-1)
    colour = bounds[owner, 4] + (bounds[owner, 5] - bounds[owner, 4]) * colour_t
    rest = np.zeros((n, 0))
    if rest_count:
        raw = np.frombuffer(data, np.uint8, n * rest_count, offset + n * 16).reshape(n, rest_count).astype(np.float64)
        rest = (np.where(raw == 0, 0.0, np.where(raw == 255, 1.0, (raw + 0.5) / 256.0)) - 0.5) * 8.0
    return CompactGaussians.from_viewer_fields(
        means=torch.from_numpy(unpack(vertex[:, 0], 0)),
        log_scales=torch.from_numpy(unpack(vertex[:, 2], 1)),
        quats=torch.from_numpy(_unpack_quats(vertex[:, 1])),
        alphas=torch.from_numpy((vertex[:, 3] & 255) / 255.0),
        sh_dc=torch.from_numpy((colour - 0.5) / SH_C0),
        sh_rest=torch.from_numpy(rest.reshape(n, 3, rest_count // 3).transpose(0, 2, 1).copy()),
    )


def _unpack_quats(bits: np.ndarray) -> np.ndarray:
    kept = np.stack([((bits >> s) & 1023) / 1023.0 for s in (20, 10, 0)], axis=-1)
    kept = (kept - 0.5) / math.sqrt(0.5)
    largest = (bits >> 30).astype(np.int64)
    q = np.zeros((len(bits), 4))
    others = OTHERS[largest]
    np.put_along_axis(q, others, kept, -1)
    q[np.arange(len(bits)), largest] = np.sqrt(np.clip(1.0 - (kept**2).sum(axis=-1), 0.0, None))
    return q
