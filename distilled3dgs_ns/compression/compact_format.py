"""The compact file format: reading, writing and every check that keeps a damaged file from becoming a wrong scene.

Layout (all little endian)::

    magic "D3DGSCMP" | uint16 format version | uint32 header length | header (UTF-8 JSON) | uint32 CRC32 of all
    bytes before it | payload (``header["stored_bytes"]`` bytes, CRC32 in ``header["payload_crc32"]``)

The payload is the concatenation of the sections listed in the header, each stored *byte-planar* (all first bytes of
its elements, then all second bytes...: the exponent bytes of fp16 values then sit together, which zlib and lzma
compress better), then optionally compressed. Sections:

- ``means`` fp16 ``[N, 3]``, relative to the header's ``position`` frame: ``means = center + scale * value``, with
  the frame centred on the bounding box and scaled to [-1, 1], so no scene can overflow fp16 and an off-centre
  scene keeps fp16's precision;
- ``scales`` (log), ``quats`` (unit norm), ``opacities`` (logit), ``features_dc`` fp16, as splatfacto holds them;
- ``vq_mask`` ``ceil(N / 8)`` bytes, the bit set (``numpy.packbits`` order) for Gaussians whose SH rest
  coefficients come from the codebook;
- ``features_rest`` fp16 ``[N - M, K - 1, 3]`` for the others (M = number of set bits), in Gaussian order;
- ``codebook`` fp16 ``[C, K - 1, 3]`` and ``vq_indices`` uint16 (uint32 past 65536 codes) ``[M]``.
"""

from __future__ import annotations

import json
import lzma
import math
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from distilled3dgs_ns.errors import UserError

MAGIC = b"D3DGSCMP"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sHI")
_CRC = struct.Struct("<I")
Compression = Literal["none", "zlib", "lzma"]
COMPRESSIONS: tuple[str, ...] = ("none", "zlib", "lzma")
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
    position_frame: tuple[list[float], float] | None = None
    """``(center, scale)`` that positions are stored relative to; None: the bounding box of ``means``."""
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


def position_frame(means: Tensor) -> tuple[list[float], float]:
    """Bounding-box centre and half of its largest side: positions relative to it lie in [-1, 1]."""
    if means.shape[0] == 0:
        return [0.0, 0.0, 0.0], 1.0
    low, high = means.min(dim=0).values.double(), means.max(dim=0).values.double()
    scale = float((high - low).max()) / 2
    return ((low + high) / 2).float().tolist(), scale if scale > 0 else 1.0


def to_frame(means: Tensor, frame: tuple[list[float], float]) -> Tensor:
    """Positions as stored: fp16 in the frame."""
    center, scale = frame
    return ((means.float() - means.new_tensor(center, dtype=torch.float32)) / scale).half()


def from_frame(stored: Tensor, frame: tuple[list[float], float]) -> Tensor:
    """Stored positions back to world (float32)."""
    center, scale = frame
    return stored.float() * scale + stored.new_tensor(center, dtype=torch.float32)


# ------------------------------------------------------------------------------------------------------ writing


def _planar(array: np.ndarray) -> bytes:
    """Little-endian bytes of ``array``, byte plane by byte plane."""
    array = np.ascontiguousarray(array)
    itemsize = array.dtype.itemsize
    return np.ascontiguousarray(array.reshape(-1).view(np.uint8).reshape(-1, itemsize).T).tobytes()


def _unplanar(data: bytes, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    planes = np.frombuffer(data, dtype=np.uint8).reshape(dtype.itemsize, -1)
    return np.ascontiguousarray(planes.T).view(dtype).reshape(shape)


def _fp16(tensor: Tensor, name: str) -> np.ndarray:
    array = tensor.detach().cpu().half().numpy().astype("<f2")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} has values that are not finite in float16 (NaN, inf or |x| > 65504)")
    return array


def _unit(quats: Tensor) -> Tensor:
    """Quaternions normalised, unless they already are to fp16 precision (so rewriting a read file is exact)."""
    norms = quats.norm(dim=-1, keepdim=True)
    return torch.where((norms - 1).abs() > 2.0**-8, quats / norms, quats)


def _sections(gaussians: CompactGaussians) -> list[tuple[str, np.ndarray]]:
    g = gaussians
    n, rest = g.num_gaussians, g.features_rest.shape[1]
    if not torch.equal(g.features_rest[g.vq_mask].float(), g.codebook[g.indices].float()):
        raise ValueError("features_rest rows under vq_mask must equal codebook[indices] (that is how they are stored)")
    frame = g.position_frame or position_frame(g.means)
    index_dtype = "<u2" if g.codebook_size <= 1 << 16 else "<u4"
    vq_mask = g.vq_mask.cpu().numpy().astype(bool)
    return [
        ("means", _fp16(to_frame(g.means.detach().cpu(), frame), "means")),
        ("scales", _fp16(g.scales, "scales")),
        ("quats", _fp16(_unit(g.quats.detach().float()), "quats")),
        ("opacities", _fp16(g.opacities.reshape(n, 1), "opacities")),
        ("features_dc", _fp16(g.features_dc, "features_dc")),
        ("vq_mask", np.packbits(vq_mask)),
        ("features_rest", _fp16(g.features_rest[~g.vq_mask], "features_rest").reshape(n - g.num_vq, rest, 3)),
        ("codebook", _fp16(g.codebook, "codebook").reshape(g.codebook_size, rest, 3)),
        ("vq_indices", g.indices.cpu().numpy().astype(index_dtype)),
    ]


def _compress(data: bytes, compression: str) -> bytes:
    if compression == "zlib":
        return zlib.compress(data, 9)
    if compression == "lzma":
        return lzma.compress(data, preset=9)
    return data


def write_compact(path: Path | str, gaussians: CompactGaussians, compression: Compression = "zlib") -> int:
    """Write ``gaussians`` (atomically: a half-written file never replaces a good one); returns the file size.

    Values are rounded to fp16 and quaternions normalised here; ``encode.pack`` returns Gaussians already in that
    form, which therefore read back exactly (positions to float32 rounding). Non-finite values are refused.
    """
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    _check_shapes(gaussians)
    sections = _sections(gaussians)
    payload = b"".join(_planar(array) for _, array in sections)
    stored = _compress(payload, compression)
    center, scale = gaussians.position_frame or position_frame(gaussians.means)
    header = {
        "num_gaussians": gaussians.num_gaussians,
        "sh_degree": gaussians.sh_degree,
        "num_vq": gaussians.num_vq,
        "codebook_size": gaussians.codebook_size,
        "position": {"center": [float(c) for c in center], "scale": float(scale)},
        "compression": compression,
        "payload_bytes": len(payload),
        "stored_bytes": len(stored),
        "payload_crc32": zlib.crc32(stored),
        "sections": [{"name": name, "dtype": array.dtype.str, "shape": list(array.shape)} for name, array in sections],
        "metadata": gaussians.metadata,
    }
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    head = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_bytes)) + header_bytes
    return write_file(path, head + _CRC.pack(zlib.crc32(head)) + stored)


def write_file(path: Path | str, data: bytes) -> int:
    """Write ``data`` atomically (a half-written file never replaces a good one), making the folder; returns its
    size. Every file writer of the package ends here."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return len(data)


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


def _expected_sections(header: dict[str, Any]) -> list[tuple[str, str, tuple[int, ...]]]:
    """Section names, dtypes and shapes the header's counts imply."""
    n, m, c = header["num_gaussians"], header["num_vq"], header["codebook_size"]
    rest = (header["sh_degree"] + 1) ** 2 - 1
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


def _check_header(path: Path, header: Any) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
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
    position = header.get("position")
    numbers = [*position.get("center", []), position.get("scale")] if isinstance(position, dict) else []
    if (
        not numbers
        or not isinstance(position["center"], list)
        or len(position["center"]) != 3
        or not all(isinstance(v, int | float) and math.isfinite(v) for v in numbers)
        or position["scale"] <= 0
    ):
        raise bad(f"position frame {position!r} is not {{'center': [x, y, z], 'scale': s > 0}}")
    expected = _expected_sections(header)
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
    header, _, start = _read_header(path, data)
    layout = _check_header(path, header)
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
    return _decode(path, header, arrays, device)


def _decode(path: Path, header: dict[str, Any], arrays: dict[str, np.ndarray], device) -> CompactGaussians:
    n, m, c = header["num_gaussians"], header["num_vq"], header["codebook_size"]
    bits = np.unpackbits(arrays["vq_mask"], count=None)
    if bits[n:].any() or int(bits[:n].sum()) != m:
        raise CompactFormatError(path, f"the VQ mask marks {int(bits.sum())} Gaussians, the header says {m}")
    indices = arrays["vq_indices"].astype(np.int64)
    if m and indices.max() >= c:
        raise CompactFormatError(path, f"a VQ index ({int(indices.max())}) points past the {c}-code codebook")

    def tensor(array: np.ndarray) -> Tensor:
        return torch.from_numpy(array.astype(np.float32)).to(device)

    values = {name: tensor(arrays[name]) for name in ("means", "scales", "quats", "opacities", "features_dc")}
    codebook = tensor(arrays["codebook"])
    for name, value in [*values.items(), ("features_rest", tensor(arrays["features_rest"])), ("codebook", codebook)]:
        if not torch.isfinite(value).all():
            raise CompactFormatError(path, f"non-finite values (NaN or inf) in {name}")
    mask = torch.from_numpy(bits[:n].astype(bool)).to(device)
    indices_t = torch.from_numpy(indices).to(device)
    features_rest = torch.empty(n, codebook.shape[1], 3, device=device)
    features_rest[~mask] = tensor(arrays["features_rest"])
    features_rest[mask] = codebook[indices_t]
    frame = (list(header["position"]["center"]), float(header["position"]["scale"]))
    return CompactGaussians(
        means=from_frame(values["means"], frame),
        scales=values["scales"],
        quats=values["quats"],
        opacities=values["opacities"],
        features_dc=values["features_dc"],
        features_rest=features_rest,
        sh_degree=header["sh_degree"],
        vq_mask=mask,
        codebook=codebook,
        indices=indices_t,
        position_frame=frame,
        metadata=header.get("metadata") if isinstance(header.get("metadata"), dict) else {},
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
    _check_header(path, header)
    return {**header, "format_version": version}
