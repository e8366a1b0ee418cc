"""The compact file format: reading, writing and every check that keeps a damaged file from becoming a wrong scene.

Layout (all little endian)::

    magic "D3DGSCMP" | uint16 format version | uint32 header length | header (UTF-8 JSON) | uint32 CRC32 of all
    bytes before it | payload (``header["stored_bytes"]`` bytes, CRC32 in ``header["payload_crc32"]``)

The payload is the concatenation of the sections listed in the header, each stored *byte-planar* (all first bytes of
its elements, then all second bytes...: the high bytes of position differences, mostly zero, then sit together, which
zlib and lzma compress well), then optionally compressed. Format 2 sections (fixed point, see ``quantise``; the
header's ``quantisation`` object holds the ranges), Gaussians in Morton order of their positions:

- ``morton_delta`` uint64 ``[N]``: the differences of the sorted Morton codes of the position cells;
- ``scales`` (log), ``features_dc`` uint8 ``[N, 3]``, ``opacities`` (logit) uint8 ``[N]``, ``quats`` ``[N, 3]``
  bytes (smallest three);
- ``vq_mask`` ``ceil(N / 8)`` bytes, the bit set (``numpy.packbits`` order) for Gaussians whose SH rest
  coefficients come from the codebook;
- ``features_rest`` int8 ``[N - M, K - 1, 3]`` for the others (M = number of set bits), in Gaussian order;
- ``codebook`` int8 ``[C, K - 1, 3]`` and ``vq_indices`` uint8 (uint16 past 256 codes, uint32 past 65536) ``[M]``.

Format 1 (read, no longer written) held every attribute in float16 (positions relative to a ``position`` frame in
the header), ``quats`` ``[N, 4]`` and ``opacities`` ``[N, 1]``, and uint16 indices.
"""

from __future__ import annotations

import json
import lzma
import math
import struct
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from distilled3dgs_ns.compression import quantise
from distilled3dgs_ns.compression.quantise import Quantisation
from distilled3dgs_ns.durable import write_atomic
from distilled3dgs_ns.errors import UserError

MAGIC = b"D3DGSCMP"
FORMAT_VERSION = 2
_PREFIX = struct.Struct("<8sHI")
_CRC = struct.Struct("<I")
Compression = Literal["none", "zlib", "lzma"]
COMPRESSIONS: tuple[str, ...] = ("none", "zlib", "lzma")
DEFAULT_COMPRESSION: Compression = "lzma"
"""What a compact file is compressed with unless asked otherwise, by the run and by ``write_compact`` alike."""
MAX_HEADER_BYTES = 1 << 20
SH_C0 = 0.28209479177387814
"""The degree-0 SH basis: colour = 0.5 + SH_C0 * dc."""
REEXPORT = "re-export it with `distilled3dgs-export compact`"


class CompactFormatError(UserError, ValueError):
    """A compact file that cannot be read as it is; the message names the file, the problem and what to do."""

    def __init__(self, path: Path | str, problem: str, fix: str = REEXPORT) -> None:
        super().__init__(f"{path}: {problem}; {fix}")
        self.path = Path(path)
        self.problem = problem


@dataclass
class CompactGaussians:
    """Decoded Gaussians (float32, splatfacto's raw parametrisation) plus the quantisation that produced them.

    Rows of ``features_rest`` under ``vq_mask`` equal ``codebook[indices]``: that is how they are stored.
    """

    means: Tensor
    """``[N, 3]``."""
    scales: Tensor
    """``[N, 3]`` log scales."""
    quats: Tensor
    """``[N, 4]`` wxyz (unit norm when read from a file)."""
    opacities: Tensor
    """``[N, 1]`` logits."""
    features_dc: Tensor
    """``[N, 3]`` (colour logits when ``sh_degree`` is 0, as in splatfacto)."""
    features_rest: Tensor
    """``[N, K - 1, 3]``, K = (sh_degree + 1)^2."""
    sh_degree: int
    vq_mask: Tensor
    """``[N]`` bool: Gaussians whose ``features_rest`` come from the codebook."""
    codebook: Tensor
    """``[C, K - 1, 3]``."""
    indices: Tensor
    """``[M]`` int64, the code of each masked Gaussian in Gaussian order."""
    quantisation: Quantisation | None = None
    """The fixed-point ranges the values were rounded with (``encode.pack`` and ``read_compact`` set them). The
    writer uses them when they cover the values (then the file reads back exactly these values), else fits new ones."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Free-form JSON information kept in the header (producer, settings, source); read back as written."""

    @classmethod
    def from_viewer_fields(
        cls, means: Tensor, log_scales: Tensor, quats: Tensor, alphas: Tensor, sh_dc: Tensor, sh_rest: Tensor
    ) -> CompactGaussians:
        """Unquantised Gaussians from what viewer formats store: opacity after the sigmoid ``[N]`` or ``[N, 1]``, the
        SH DC ``[N, 3]`` (turned into colour logits when ``sh_rest`` has no bands, as splatfacto's degree 0 holds
        them) and ``sh_rest`` ``[N, K - 1, 3]``."""
        n, rest_count = means.shape[0], sh_rest.shape[1]
        degree = math.isqrt(rest_count + 1) - 1
        alphas = alphas.float().reshape(n, 1).clamp(1e-6, 1 - 1e-6)
        sh_dc = sh_dc.float()
        return cls(
            means=means.float(),
            scales=log_scales.float(),
            quats=quats.float(),
            opacities=torch.logit(alphas),
            features_dc=sh_dc if degree > 0 else torch.logit((sh_dc * SH_C0 + 0.5).clamp(1e-4, 1 - 1e-4)),
            features_rest=sh_rest.float(),
            sh_degree=degree,
            vq_mask=torch.zeros(n, dtype=torch.bool),
            codebook=torch.zeros(0, rest_count, 3),
            indices=torch.zeros(0, dtype=torch.long),
        )

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[0]

    @property
    def num_vq(self) -> int:
        return int(self.indices.shape[0])

    @property
    def codebook_size(self) -> int:
        return self.codebook.shape[0]

    def take(self, order: Tensor) -> CompactGaussians:
        """The Gaussians in ``order`` (a permutation), codes following their Gaussians."""
        codes = torch.full((self.num_gaussians,), -1, dtype=torch.long, device=self.vq_mask.device)
        codes[self.vq_mask] = self.indices.to(codes.device)
        codes, mask = codes[order], self.vq_mask[order]
        fields = {name: value[order] for name, value in self.params().items()}
        return replace(self, **fields, vq_mask=mask, indices=codes[mask])

    def params(self) -> dict[str, Tensor]:
        """The tensors keyed by splatfacto's ``gauss_params`` names."""
        return {
            "means": self.means,
            "scales": self.scales,
            "quats": self.quats,
            "features_dc": self.features_dc,
            "features_rest": self.features_rest,
            "opacities": self.opacities,
        }


# ------------------------------------------------------------------------------------------------------ writing


def _planar(array: np.ndarray) -> bytes:
    """Little-endian bytes of ``array``, byte plane by byte plane."""
    array = np.ascontiguousarray(array)
    itemsize = array.dtype.itemsize
    return np.ascontiguousarray(array.reshape(-1).view(np.uint8).reshape(-1, itemsize).T).tobytes()


def _unplanar(data: bytes, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    planes = np.frombuffer(data, dtype=np.uint8).reshape(dtype.itemsize, -1)
    return np.ascontiguousarray(planes.T).view(dtype).reshape(shape)


def _fields(g: CompactGaussians) -> dict[str, np.ndarray]:
    """The values to store as float32 arrays, SH rest values stored by the file (codes and unquantised rows) flat."""

    def array(tensor: Tensor) -> np.ndarray:
        return tensor.detach().cpu().float().numpy()

    width = 3 * g.features_rest.shape[1]
    rest = array(g.features_rest[~g.vq_mask.to(g.features_rest.device)])
    sh = np.concatenate([rest.reshape(len(rest), width), array(g.codebook).reshape(g.codebook_size, width)])
    fields = {name: array(value) for name, value in g.params().items()}
    return fields | {"opacities": fields["opacities"].reshape(-1), "sh": sh}


def _index_dtype(codebook_size: int) -> str:
    """Format 2's VQ indices: the narrowest unsigned integer that holds every code."""
    return "|u1" if codebook_size <= 1 << 8 else "<u2" if codebook_size <= 1 << 16 else "<u4"


def fixed_point(g: CompactGaussians) -> tuple[CompactGaussians, Quantisation, dict[str, np.ndarray]]:
    """The Gaussians in Morton order, their quantisation (theirs when it covers them) and the stored sections."""
    fields = _fields(g)
    for name, value in fields.items():
        if not np.isfinite(value).all():
            raise ValueError(f"{name} has values that are not finite (NaN or inf)")
    q = g.quantisation if g.quantisation is not None and quantise.covers(g.quantisation, fields) else None
    q = q or quantise.fit(fields)
    codes = quantise.position_codes(fields["means"], q)
    order = np.argsort(codes, kind="stable")
    g = g.take(torch.from_numpy(order).to(g.means.device))
    fields = _fields(g)
    n, rest, c = g.num_gaussians, g.features_rest.shape[1], g.codebook_size
    sh = quantise.encode_sh(fields["sh"], q.sh_max).reshape(len(fields["sh"]), rest, 3)
    sorted_codes = codes[order]
    sections = {
        "morton_delta": np.diff(sorted_codes, prepend=np.uint64(0)).astype("<u8"),
        "scales": quantise.encode_linear(fields["scales"], *q.scale_range, 8).astype(np.uint8),
        "quats": quantise.encode_rotations(fields["quats"]),
        "opacities": quantise.encode_linear(fields["opacities"], *q.opacity_range, 8).astype(np.uint8),
        "features_dc": quantise.encode_linear(fields["features_dc"], q.dc_low, q.dc_high, 8).astype(np.uint8),
        "vq_mask": np.packbits(g.vq_mask.cpu().numpy().astype(bool)),
        "features_rest": sh[: n - g.num_vq],
        "codebook": sh[n - g.num_vq :].reshape(c, rest, 3),
        "vq_indices": g.indices.cpu().numpy().astype(_index_dtype(c)),
    }
    return g, q, sections


def decode_sections(
    sections: dict[str, np.ndarray], q: Quantisation, sh_degree: int, device: torch.device | str = "cpu"
) -> CompactGaussians:
    """Gaussians from the stored sections (the inverse of ``fixed_point``); callers check counts and indices.
    Raises ``ValueError`` when the position differences leave the grid ``q`` declares (a damaged file)."""
    n, rest = len(sections["morton_delta"]), (sh_degree + 1) ** 2 - 1
    with np.errstate(over="ignore"):
        codes = np.cumsum(sections["morton_delta"], dtype=np.uint64)
    if n and (np.any(np.diff(codes.astype(np.float64)) < 0) or int(codes[-1]) >> (3 * q.position_bits)):
        raise ValueError(f"positions outside the {q.position_bits}-bit grid the header declares")
    cells = quantise.morton_cells(codes, q.position_bits)

    def tensor(array: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(device)

    mask = torch.from_numpy(np.unpackbits(sections["vq_mask"], count=n).astype(bool)).to(device)
    codes, unquantised = sections["codebook"], sections["features_rest"]
    codebook = tensor(quantise.decode_sh(codes.reshape(len(codes), 3 * rest), q.sh_max)).reshape(len(codes), rest, 3)
    indices = torch.from_numpy(sections["vq_indices"].astype(np.int64)).to(device)
    features_rest = torch.empty(n, rest, 3, device=device)
    values = quantise.decode_sh(unquantised.reshape(len(unquantised), 3 * rest), q.sh_max)
    features_rest[~mask] = tensor(values).reshape(len(unquantised), rest, 3)
    features_rest[mask] = codebook[indices]
    return CompactGaussians(
        means=tensor(quantise.decode_linear(cells, q.position_low, q.position_high, q.position_bits)),
        scales=tensor(quantise.decode_linear(sections["scales"], *q.scale_range, 8)),
        quats=tensor(quantise.decode_rotations(sections["quats"])),
        opacities=tensor(quantise.decode_linear(sections["opacities"], *q.opacity_range, 8)).reshape(n, 1),
        features_dc=tensor(quantise.decode_linear(sections["features_dc"], q.dc_low, q.dc_high, 8)),
        features_rest=features_rest,
        sh_degree=sh_degree,
        vq_mask=mask,
        codebook=codebook,
        indices=indices,
        quantisation=q,
    )


def _compress(data: bytes, compression: str) -> bytes:
    if compression == "zlib":
        return zlib.compress(data, 9)
    if compression == "lzma":
        return lzma.compress(data, preset=9)
    return data


def write_compact(path: Path | str, gaussians: CompactGaussians, compression: Compression = DEFAULT_COMPRESSION) -> int:
    """Write ``gaussians`` (atomically: a half-written file never replaces a good one) in Morton order; returns the
    file size.

    Values are rounded to the fixed point of ``quantise`` here; ``encode.pack`` returns Gaussians already rounded and
    ordered, which therefore read back as they are. Non-finite values are refused.
    """
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    _check_shapes(gaussians)
    _, quantisation, sections = fixed_point(gaussians)
    payload = b"".join(_planar(array) for array in sections.values())
    stored = _compress(payload, compression)
    header = {
        "num_gaussians": gaussians.num_gaussians,
        "sh_degree": gaussians.sh_degree,
        "num_vq": gaussians.num_vq,
        "codebook_size": gaussians.codebook_size,
        "quantisation": quantisation.to_json(),
        "compression": compression,
        "payload_bytes": len(payload),
        "stored_bytes": len(stored),
        "payload_crc32": zlib.crc32(stored),
        "sections": [{"name": k, "dtype": a.dtype.str, "shape": list(a.shape)} for k, a in sections.items()],
        "metadata": gaussians.metadata,
    }
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    head = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_bytes)) + header_bytes
    return write_atomic(path, head + _CRC.pack(zlib.crc32(head)) + stored)


def _check_shapes(g: CompactGaussians) -> None:
    n, rest = g.num_gaussians, (g.sh_degree + 1) ** 2 - 1
    expected = {
        "means": (n, 3),
        "scales": (n, 3),
        "quats": (n, 4),
        "opacities": (n, 1),
        "features_dc": (n, 3),
        "features_rest": (n, rest, 3),
        "vq_mask": (n,),
        "codebook": (g.codebook_size, rest, 3),
        "indices": (int(g.vq_mask.sum()),),
    }
    for name, shape in expected.items():
        actual = tuple(getattr(g, name).shape)
        if actual != shape:
            raise ValueError(f"{name} has shape {actual}, expected {shape} (N={n}, sh_degree={g.sh_degree})")


# ------------------------------------------------------------------------------------------------------ reading


def _expected_sections(header: dict[str, Any], version: int) -> list[tuple[str, str, tuple[int, ...]]]:
    """Section names, dtypes and shapes the header's counts imply."""
    n, m, c = header["num_gaussians"], header["num_vq"], header["codebook_size"]
    rest = (header["sh_degree"] + 1) ** 2 - 1
    if version >= 2:
        return [
            ("morton_delta", "<u8", (n,)),
            ("scales", "|u1", (n, 3)),
            ("quats", "|u1", (n, 3)),
            ("opacities", "|u1", (n,)),
            ("features_dc", "|u1", (n, 3)),
            ("vq_mask", "|u1", (math.ceil(n / 8),)),
            ("features_rest", "|i1", (n - m, rest, 3)),
            ("codebook", "|i1", (c, rest, 3)),
            ("vq_indices", _index_dtype(c), (m,)),
        ]
    return [
        ("means", "<f2", (n, 3)),
        ("scales", "<f2", (n, 3)),
        ("quats", "<f2", (n, 4)),
        ("opacities", "<f2", (n, 1)),
        ("features_dc", "<f2", (n, 3)),
        ("vq_mask", "|u1", (math.ceil(n / 8),)),
        ("features_rest", "<f2", (n - m, rest, 3)),
        ("codebook", "<f2", (c, rest, 3)),
        ("vq_indices", "<u2" if c <= 1 << 16 else "<u4", (m,)),
    ]


def _check_header(path: Path, header: Any, version: int) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
    """Validate the header's fields and that its counts, sections and sizes agree; returns the section layout."""

    def bad(problem: str) -> CompactFormatError:
        return CompactFormatError(path, f"inconsistent header: {problem}")

    if not isinstance(header, dict):
        raise bad("not a JSON object")
    for key in ("num_gaussians", "sh_degree", "num_vq", "codebook_size", "payload_bytes", "stored_bytes"):
        if not isinstance(header.get(key), int) or isinstance(header.get(key), bool) or header[key] < 0:
            raise bad(f"{key!r} must be a non-negative integer, got {header.get(key)!r}")
    if not 0 <= header["sh_degree"] <= 4:
        raise bad(f"sh_degree {header['sh_degree']} is outside 0..4")
    if header["num_vq"] > header["num_gaussians"]:
        raise bad(f"num_vq ({header['num_vq']}) exceeds num_gaussians ({header['num_gaussians']})")
    if (header["num_vq"] > 0) != (header["codebook_size"] > 0):
        raise bad(f"num_vq {header['num_vq']} with codebook_size {header['codebook_size']}")
    if header.get("compression") not in COMPRESSIONS:
        raise bad(f"unknown compression {header.get('compression')!r} (known: {', '.join(COMPRESSIONS)})")
    if not isinstance(header.get("payload_crc32"), int):
        raise bad("payload_crc32 missing")
    if version >= 2:
        try:
            Quantisation.from_json(header.get("quantisation"), 3 * rest_count(header))
        except ValueError as error:
            raise bad(f"quantisation: {error}") from None
    else:
        _check_position_frame(header.get("position"), bad)
    expected = _expected_sections(header, version)
    listed = [
        (s.get("name"), s.get("dtype"), tuple(s.get("shape", ()))) if isinstance(s, dict) else s
        for s in header.get("sections", [])
    ]
    if listed != expected:
        raise bad(f"sections {listed} do not match the counts, which imply {expected}")
    layout = [(name, np.dtype(dtype), shape) for name, dtype, shape in expected]
    total = sum(dtype.itemsize * math.prod(shape) for _, dtype, shape in layout)
    if total != header["payload_bytes"]:
        raise bad(f"the sections need {total} bytes, payload_bytes says {header['payload_bytes']}")
    if header["compression"] == "none" and header["stored_bytes"] != header["payload_bytes"]:
        raise bad(f"uncompressed payload of {header['payload_bytes']} bytes stored as {header['stored_bytes']}")
    return layout


def rest_count(header: dict[str, Any]) -> int:
    """SH rest coefficients per colour channel, ``(degree + 1)^2 - 1``."""
    return (header["sh_degree"] + 1) ** 2 - 1


def _check_position_frame(position: Any, bad: Any) -> None:
    """Format 1's ``{'center': [x, y, z], 'scale': s > 0}``."""
    numbers = [*position.get("center", []), position.get("scale")] if isinstance(position, dict) else []
    if (
        not numbers
        or not isinstance(position["center"], list)
        or len(position["center"]) != 3
        or not all(isinstance(v, int | float) and math.isfinite(v) for v in numbers)
        or position["scale"] <= 0
    ):
        raise bad(f"position frame {position!r} is not {{'center': [x, y, z], 'scale': s > 0}}")


def _decompress(path: Path, stored: bytes, compression: str, size: int) -> bytes:
    try:
        if compression == "zlib":
            payload = zlib.decompress(stored)
        elif compression == "lzma":
            payload = lzma.decompress(stored)
        else:
            payload = stored
    except (zlib.error, lzma.LZMAError) as error:
        raise CompactFormatError(path, f"the {compression} payload does not decompress ({error})") from None
    if len(payload) != size:
        raise CompactFormatError(path, f"the payload decompresses to {len(payload)} bytes, the header says {size}")
    return payload


def _read_header(path: Path, data: bytes) -> tuple[dict[str, Any], int, int]:
    """The header (parsed, not yet validated), the format version and the offset where the payload starts."""
    if not data:
        raise CompactFormatError(path, "the file is empty")
    if data.startswith(b"ply"):
        raise CompactFormatError(
            path,
            "this is a PLY file, not a compact file",
            "pass a file written by `distilled3dgs-export compact` (a PLY loads directly in 3DGS viewers)",
        )
    if not data.startswith(MAGIC):
        if MAGIC.startswith(data):
            raise CompactFormatError(path, f"truncated: {len(data)} bytes, not even the {_PREFIX.size}-byte prefix")
        raise CompactFormatError(
            path, f"not a distilled3dgs compact file (starts with {data[:8]!r}, expected {MAGIC!r})", "check the path"
        )
    if len(data) < _PREFIX.size:
        raise CompactFormatError(path, f"truncated: {len(data)} bytes, not even the {_PREFIX.size}-byte prefix")
    _, version, header_length = _PREFIX.unpack_from(data)
    if version > FORMAT_VERSION:
        raise CompactFormatError(
            path,
            f"written in compact format version {version}, this distilled3dgs_ns reads up to version {FORMAT_VERSION}",
            "upgrade distilled3dgs_ns (pip install -U distilled3dgs_ns) to read it",
        )
    if version == 0:
        raise CompactFormatError(path, "format version 0 does not exist: the file is corrupted")
    if header_length > MAX_HEADER_BYTES:
        raise CompactFormatError(path, f"header length {header_length} bytes is implausible: the file is corrupted")
    header_end = _PREFIX.size + header_length
    if len(data) < header_end + _CRC.size:
        raise CompactFormatError(path, f"truncated: {len(data)} bytes, the header alone needs {header_end + _CRC.size}")
    (header_crc,) = _CRC.unpack_from(data, header_end)
    if zlib.crc32(data[:header_end]) != header_crc:
        raise CompactFormatError(path, "header checksum mismatch: the file is corrupted")
    try:
        header = json.loads(data[_PREFIX.size : header_end].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CompactFormatError(path, f"the header is not valid JSON ({error})") from None
    return header, version, header_end + _CRC.size


def _compact_file(path: Path | str) -> Path:
    """``path`` as a file to read, or the one-line error for a folder or a missing file."""
    path = Path(path)
    if path.is_dir():
        raise CompactFormatError(path, "is a folder, not a compact file", "pass the .compact file itself")
    if not path.exists():
        raise CompactFormatError(path, "no such file", "pass a file written by `distilled3dgs-export compact`")
    return path


def read_compact(path: Path | str, device: torch.device | str = "cpu") -> CompactGaussians:
    """Read and fully validate a compact file; raises ``CompactFormatError`` for anything wrong with its content."""
    path = _compact_file(path)
    data = path.read_bytes()
    header, version, start = _read_header(path, data)
    layout = _check_header(path, header, version)
    stored = data[start:]
    if len(stored) < header["stored_bytes"]:
        raise CompactFormatError(path, f"truncated: the payload has {len(stored)} of {header['stored_bytes']} bytes")
    if len(stored) > header["stored_bytes"]:
        extra = len(stored) - header["stored_bytes"]
        raise CompactFormatError(path, f"{extra} unexpected bytes after the payload (two files concatenated?)")
    if zlib.crc32(stored) != header["payload_crc32"]:
        raise CompactFormatError(path, "payload checksum mismatch: the file is corrupted")
    payload = _decompress(path, stored, header["compression"], header["payload_bytes"])
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for name, dtype, shape in layout:
        size = dtype.itemsize * math.prod(shape)
        arrays[name] = _unplanar(payload[offset : offset + size], dtype, shape)
        offset += size
    _check_indices(path, header, arrays)
    if version >= 2:
        return _decode_fixed_point(path, header, arrays, device)
    return _decode_float16(path, header, arrays, device)


def _check_indices(path: Path, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    n, m, c = header["num_gaussians"], header["num_vq"], header["codebook_size"]
    bits = np.unpackbits(arrays["vq_mask"], count=None)
    if bits[n:].any() or int(bits[:n].sum()) != m:
        raise CompactFormatError(path, f"the VQ mask marks {int(bits.sum())} Gaussians, the header says {m}")
    indices = arrays["vq_indices"]
    if m and int(indices.max()) >= c:
        raise CompactFormatError(path, f"a VQ index ({int(indices.max())}) points past the {c}-code codebook")


def _metadata(header: dict[str, Any]) -> dict[str, Any]:
    return header.get("metadata") if isinstance(header.get("metadata"), dict) else {}


def _decode_fixed_point(path: Path, header: dict[str, Any], arrays: dict[str, np.ndarray], device) -> CompactGaussians:
    q = Quantisation.from_json(header["quantisation"], 3 * rest_count(header))
    try:
        gaussians = decode_sections(arrays, q, header["sh_degree"], device)
    except ValueError as error:
        raise CompactFormatError(path, str(error)) from None
    gaussians.metadata = _metadata(header)
    return gaussians


def _decode_float16(path: Path, header: dict[str, Any], arrays: dict[str, np.ndarray], device) -> CompactGaussians:
    """Format 1."""
    n = header["num_gaussians"]

    def tensor(array: np.ndarray) -> Tensor:
        return torch.from_numpy(array.astype(np.float32)).to(device)

    values = {name: tensor(arrays[name]) for name in ("means", "scales", "quats", "opacities", "features_dc")}
    codebook = tensor(arrays["codebook"])
    for name, value in [*values.items(), ("features_rest", tensor(arrays["features_rest"])), ("codebook", codebook)]:
        if not torch.isfinite(value).all():
            raise CompactFormatError(path, f"non-finite values (NaN or inf) in {name}")
    mask = torch.from_numpy(np.unpackbits(arrays["vq_mask"], count=n).astype(bool)).to(device)
    indices = torch.from_numpy(arrays["vq_indices"].astype(np.int64)).to(device)
    features_rest = torch.empty(n, codebook.shape[1], 3, device=device)
    features_rest[~mask] = tensor(arrays["features_rest"])
    features_rest[mask] = codebook[indices]
    center, scale = header["position"]["center"], float(header["position"]["scale"])
    return CompactGaussians(
        means=values["means"] * scale + values["means"].new_tensor(center),
        scales=values["scales"],
        quats=values["quats"],
        opacities=values["opacities"],
        features_dc=values["features_dc"],
        features_rest=features_rest,
        sh_degree=header["sh_degree"],
        vq_mask=mask,
        codebook=codebook,
        indices=indices,
        metadata=_metadata(header),
    )


def read_header(path: Path | str) -> dict[str, Any]:
    """The validated header alone (counts, sections, metadata, plus ``format_version`` from the prefix), without
    reading the payload."""
    path = _compact_file(path)
    with path.open("rb") as file:
        head = file.read(_PREFIX.size)
        if len(head) == _PREFIX.size and head.startswith(MAGIC):
            head += file.read(min(_PREFIX.unpack(head)[2], MAX_HEADER_BYTES) + _CRC.size)
    header, version, _ = _read_header(path, head)
    _check_header(path, header, version)
    return {**header, "format_version": version}
