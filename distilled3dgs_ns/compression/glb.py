"""glTF 2.0 binary files of Gaussian splats (``KHR_gaussian_splatting``, release candidate), the form 3D tool chains
read (Cesium, three.js and Babylon loaders), plain or with the SPZ compression extension (draft
``KHR_gaussian_splatting_compression_spz_2``).

One point primitive (mode 0) whose attributes are the splat's: ``POSITION``, ``KHR_gaussian_splatting:ROTATION``
(unit quaternion, glTF's x y z w), ``:SCALE`` (linear), ``:OPACITY`` (after the sigmoid), ``:SH_DEGREE_0_COEF_0``
(the SH DC coefficients) and ``:SH_DEGREE_l_COEF_n`` for every band of the model (m from -l to l), all float32,
colour in display sRGB. glTF's frame is y up, x left, z forward; a 3DGS PLY's (ours, in the capture's frame) is read
as x right, y down, z forward, as splat-transform converts it: a half turn about z (x and y negated, with the
rotations and the SH coefficients that change sign). With compression the attributes keep their types and counts
but no data: the whole SPZ file (version 3, which stores the same scene in its own right-up-back frame, as the
draft asks) sits in the binary chunk. Written from the extensions' specifications (KhronosGroup/glTF);
``read_glb`` undoes either form, for evaluation and round trips.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distilled3dgs_ns.compression.compact_format import CompactGaussians
from distilled3dgs_ns.compression.ply import ply_properties
from distilled3dgs_ns.compression.spz import sh_flip_signs, spz_bytes, spz_gaussians
from distilled3dgs_ns.durable import write_atomic
from distilled3dgs_ns.errors import UserError

EXTENSION = "KHR_gaussian_splatting"
SPZ_EXTENSION = "KHR_gaussian_splatting_compression_spz_2"
PREFIX = f"{EXTENSION}:"
MAGIC, VERSION = 0x46546C67, 2  # "glTF"
JSON_CHUNK, BIN_CHUNK = 0x4E4F534A, 0x004E4942
FLOAT, POINTS = 5126, 0
FLIP = (-1.0, -1.0, 1.0)
"""The PLY's frame (x right, y down, z forward) -> glTF's (x left, y up, z forward): a half turn about z."""
COMPONENTS = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}
VERTEX_DATA = {"target": 34962}
"""An attribute's buffer view holds vertex data (ARRAY_BUFFER)."""


class GlbError(UserError):
    """A .glb that cannot be read; the message names the file."""


def _sh_semantics(degree: int) -> list[str]:
    """The SH rest attributes, in the order of our coefficients (band by band, m from -l to l)."""
    return [f"{PREFIX}SH_DEGREE_{band}_COEF_{n}" for band in range(1, degree + 1) for n in range(2 * band + 1)]


def glb_attributes(gaussians: CompactGaussians) -> dict[str, np.ndarray]:
    """Semantic -> ``[N, C]`` float32 values, in glTF's frame."""
    columns = ply_properties(gaussians)
    n = gaussians.num_gaussians

    def stack(*names: str) -> np.ndarray:
        return np.stack([columns[name] for name in names], axis=1).astype(np.float64)

    flip = np.array(FLIP)
    quats = stack("rot_1", "rot_2", "rot_3", "rot_0") * np.array([*FLIP, 1.0])
    attributes = {
        "POSITION": stack("x", "y", "z") * flip,
        f"{PREFIX}ROTATION": quats / np.linalg.norm(quats, axis=1, keepdims=True).clip(1e-12),
        f"{PREFIX}SCALE": np.exp(stack("scale_0", "scale_1", "scale_2")),
        f"{PREFIX}OPACITY": 1.0 / (1.0 + np.exp(-stack("opacity"))),
        f"{PREFIX}SH_DEGREE_0_COEF_0": stack("f_dc_0", "f_dc_1", "f_dc_2"),
    }
    if gaussians.sh_degree > 0:
        rest = gaussians.features_rest.detach().double().cpu().numpy().reshape(n, -1, 3)
        signs = sh_flip_signs(gaussians.sh_degree, FLIP)
        for k, semantic in enumerate(_sh_semantics(gaussians.sh_degree)):
            attributes[semantic] = rest[:, k] * signs[k]
    return {name: value.astype("<f4") for name, value in attributes.items()}


def _accessor(values: np.ndarray, buffer_view: int | None) -> dict[str, Any]:
    kind = next(name for name, width in COMPONENTS.items() if width == values.shape[1])
    accessor: dict[str, Any] = {"componentType": FLOAT, "count": len(values), "type": kind}
    if buffer_view is not None:
        accessor["bufferView"] = buffer_view
    return accessor


def _pad(data: bytes, filler: bytes) -> bytes:
    return data + filler * (-len(data) % 4)


def glb_bytes(gaussians: CompactGaussians, compress: bool = False) -> bytes:
    """The whole ``.glb``: the attributes as float32 buffers, or (``compress``) the SPZ file in their place."""
    if gaussians.num_gaussians == 0:
        raise GlbError("a glTF splat needs at least one Gaussian; this splat has none")
    attributes = glb_attributes(gaussians)
    blobs = [spz_bytes(gaussians)] if compress else [values.tobytes() for values in attributes.values()]
    accessors = [_accessor(values, None if compress else i) for i, values in enumerate(attributes.values())]
    accessors[0] |= {
        "min": attributes["POSITION"].min(axis=0).tolist(),
        "max": attributes["POSITION"].max(axis=0).tolist(),
    }
    views, offset = [], 0
    for blob in blobs:
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(blob)} | ({} if compress else VERTEX_DATA))
        offset += len(_pad(blob, b"\0"))
    splatting: dict[str, Any] = {"kernel": "ellipse", "colorSpace": "srgb_rec709_display"}
    if compress:
        splatting["extensions"] = {SPZ_EXTENSION: {"bufferView": 0}}
    primitive = {
        "mode": POINTS,
        "attributes": {semantic: i for i, semantic in enumerate(attributes)},
        "extensions": {EXTENSION: splatting},
    }
    document: dict[str, Any] = {
        "asset": {"version": "2.0", "generator": "distilled3dgs_ns"},
        "extensionsUsed": [EXTENSION, SPZ_EXTENSION] if compress else [EXTENSION],
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [primitive]}],
        "accessors": accessors,
        "bufferViews": views,
        "buffers": [{"byteLength": offset}],
    }
    if compress:  # no fallback data: a reader without SPZ has nothing to show
        document["extensionsRequired"] = [EXTENSION, SPZ_EXTENSION]
    text = _pad(json.dumps(document, separators=(",", ":")).encode(), b" ")
    binary = b"".join(_pad(blob, b"\0") for blob in blobs)
    chunks = struct.pack("<II", len(text), JSON_CHUNK) + text + struct.pack("<II", len(binary), BIN_CHUNK) + binary
    return struct.pack("<III", MAGIC, VERSION, 12 + len(chunks)) + chunks


def write_glb(path: Path | str, gaussians: CompactGaussians) -> int:
    """Write the Gaussians as a plain ``KHR_gaussian_splatting`` .glb; returns its size in bytes."""
    return write_atomic(path, glb_bytes(gaussians))


def write_spz_glb(path: Path | str, gaussians: CompactGaussians) -> int:
    """Write the Gaussians as a .glb whose data is an SPZ file (the SPZ compression extension)."""
    return write_atomic(path, glb_bytes(gaussians, compress=True))


def _chunks(path: Path) -> tuple[dict[str, Any], bytes]:
    try:
        data = path.read_bytes()
        magic, version, length = struct.unpack_from("<III", data)
        text_length, kind = struct.unpack_from("<II", data, 12)
        document = json.loads(data[20 : 20 + text_length])
        binary = b""
        if 20 + text_length < length:
            binary_length, binary_kind = struct.unpack_from("<II", data, 20 + text_length)
            binary = data[28 + text_length : 28 + text_length + binary_length] if binary_kind == BIN_CHUNK else b""
    except (OSError, struct.error, ValueError) as error:
        raise GlbError(f"{path}: not a readable .glb ({error}); write it again") from None
    if magic != MAGIC or version != VERSION or kind != JSON_CHUNK or length != len(data):
        raise GlbError(f"{path}: not a glTF 2.0 binary file of {len(data)} bytes; write it again")
    return document, binary


def read_glb(path: Path | str) -> CompactGaussians:
    """The Gaussians of a ``KHR_gaussian_splatting`` .glb (plain or SPZ-compressed), back in the PLY's frame."""
    path = Path(path)
    document, binary = _chunks(path)
    try:
        primitive = document["meshes"][0]["primitives"][0]
        splatting = primitive["extensions"][EXTENSION]
        views = document["bufferViews"]
        compressed = splatting.get("extensions", {}).get(SPZ_EXTENSION)
        if compressed is not None:
            view = views[compressed["bufferView"]]
            start = view.get("byteOffset", 0)
            return spz_gaussians(binary[start : start + view["byteLength"]], f"{path} (its SPZ buffer)")
        attributes = {
            name: _values(document, binary, index)
            for name, index in primitive["attributes"].items()
            if name == "POSITION" or name.startswith(PREFIX)  # not COLOR_0, a fallback for point-cloud readers
        }
        return _gaussians(path, attributes)
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise GlbError(f"{path}: no readable {EXTENSION} primitive ({error!r}); write the file again") from None


def _values(document: dict[str, Any], binary: bytes, index: int) -> np.ndarray:
    accessor = document["accessors"][index]
    view = document["bufferViews"][accessor["bufferView"]]
    if accessor["componentType"] != FLOAT or view.get("byteStride") not in (None, 4 * COMPONENTS[accessor["type"]]):
        raise ValueError(f"accessor {index} is not tightly packed float32")
    start = view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
    count, width = accessor["count"], COMPONENTS[accessor["type"]]
    return np.frombuffer(binary, "<f4", count * width, start).reshape(count, width).astype(np.float64)


def _gaussians(path: Path, attributes: dict[str, np.ndarray]) -> CompactGaussians:
    bands = [name for name in attributes if name.startswith(f"{PREFIX}SH_DEGREE_") and not name.endswith("_0_COEF_0")]
    degree = max((int(name.split("_")[-3]) for name in bands), default=0)
    missing = [name for name in _sh_semantics(degree) if name not in attributes]
    if missing:
        raise GlbError(f"{path}: SH band {degree} is incomplete (no {missing[0]}); write the file again")
    flip = np.array(FLIP)
    signs = sh_flip_signs(degree, FLIP)
    rest = [attributes[name] * signs[k] for k, name in enumerate(_sh_semantics(degree))]
    x, y, z, w = (attributes[f"{PREFIX}ROTATION"] * np.array([*FLIP, 1.0])).T
    n = len(attributes["POSITION"])
    return CompactGaussians.from_viewer_fields(
        means=torch.from_numpy(attributes["POSITION"] * flip),
        log_scales=torch.from_numpy(np.log(attributes[f"{PREFIX}SCALE"].clip(1e-30))),
        quats=torch.from_numpy(np.stack([w, x, y, z], axis=1)),
        alphas=torch.from_numpy(attributes[f"{PREFIX}OPACITY"]),
        sh_dc=torch.from_numpy(attributes[f"{PREFIX}SH_DEGREE_0_COEF_0"]),
        sh_rest=torch.from_numpy(np.stack(rest, axis=1) if rest else np.zeros((n, 0, 3))),
    )
