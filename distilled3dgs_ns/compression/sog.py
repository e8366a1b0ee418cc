"""PlayCanvas' SOG (version 2): the format SuperSplat, PlayCanvas' engine and Spark load, which PlayCanvas now
recommends over the compressed PLY. Every attribute is an 8-bit RGBA lossless WebP image, one pixel per Gaussian in
Morton order (neighbours on the image are neighbours in space, which WebP's prediction compresses), described by a
``meta.json``; the bundled ``.sog`` is a zip of the images and the JSON.

Written from the format as splat-transform and the engine read it (read, not copied): positions ``sign(v) * log(1 +
|v|)`` at 16 bits per axis over their range, split into a low and a high byte image; rotations as the smallest three
components (the largest one's index in the alpha channel as ``252 + i``); log scales and SH DC coefficients as 8-bit
indices into 256-entry codebooks (a 1-D k-means over all three channels); opacity after the sigmoid in the DC image's
alpha; the SH rest as a k-means palette of whole coefficient vectors (``shN_centroids``, their values indices into a
third codebook) and a 16-bit palette index per Gaussian (``shN_labels``). The frame is the PLY's, unchanged.
``read_sog`` undoes it, for evaluation and round trips (in the file's Morton order).

We write our own rather than use ``sogpy`` (PyPI): its SH palette image interleaves the coefficients differently
from the reader's layout and it cannot write a palette for fewer than 1024 Gaussians with SH; it has no reader.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from distilled3dgs_ns.compression.codebook import train_codebook
from distilled3dgs_ns.compression.compact_format import CompactGaussians
from distilled3dgs_ns.compression.compressed_ply import OTHERS, morton_order
from distilled3dgs_ns.compression.ply import ply_properties
from distilled3dgs_ns.durable import write_atomic
from distilled3dgs_ns.errors import UserError

VERSION = 2
CODEBOOK_SIZE = 256
PALETTE_SHARE = 0.25
"""SH rest palette entries per Gaussian. splat-transform takes the power of two at or below the count (at most 64k),
almost one entry per Gaussian in a small splat; a quarter keeps the file below the SPZ's for the students we make
(docs/formats.md)."""
MAX_PALETTE = 65536
"""The most entries a 16-bit label (two bytes of ``shN_labels``) can address."""
PALETTE_COLUMNS = 64
"""Palette entries per row of ``shN_centroids`` (readers derive the SH degree from its width, 64 x coefficients)."""
KMEANS_ITERATIONS = 10
MAX_SIDE = 16383
"""The largest WebP side."""
ROTATION_TAG = 252
"""The rotation image's alpha is ``252 + index of the largest component``."""
IMAGES = ("means_l", "means_u", "quats", "scales", "sh0", "shN_centroids", "shN_labels")


class SogError(UserError):
    """A SOG file that cannot be written or read; the message names the file."""


def _side_lengths(count: int) -> tuple[int, int]:
    """The per-Gaussian images' width and height: a near-square multiple of 4 on each side."""
    width = max(4, math.ceil(math.sqrt(count) / 4) * 4)
    return width, max(4, math.ceil(count / width / 4) * 4)


def _webp(pixels: np.ndarray, width: int, height: int) -> bytes:
    """``pixels`` ``[M, 4]`` uint8 (M <= width * height, row-major from the top left) as a lossless RGBA WebP."""
    canvas = np.zeros((width * height, 4), dtype=np.uint8)
    canvas[: len(pixels)] = pixels
    buffer = io.BytesIO()
    Image.fromarray(canvas.reshape(height, width, 4), "RGBA").save(buffer, "WEBP", lossless=True, exact=True)
    return buffer.getvalue()


def _log_transform(values: np.ndarray) -> np.ndarray:
    return np.sign(values) * np.log1p(np.abs(values))


def scalar_codebook(
    values: np.ndarray, size: int = CODEBOOK_SIZE, iterations: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """A 1-D k-means of ``values`` (any shape): ``size`` ascending centroids (float32) and each value's uint8 index.

    Seeded at evenly spaced quantiles and assigned through the midpoints between sorted centroids, so every iteration
    is a sort-free search. The smallest and largest values are codes of their own (a k-means leaves the sparse tails
    coarse, and the tail of the log scales is the few Gaussians covering most pixels); fewer distinct values than
    ``size`` are kept exactly."""
    flat = np.nan_to_num(values.astype(np.float64).reshape(-1), posinf=0.0, neginf=0.0)
    distinct = np.unique(flat)
    if len(distinct) <= size:
        codes = np.pad(distinct, (0, size - len(distinct)), mode="edge") if len(distinct) else np.zeros(size)
    else:
        codes = np.quantile(flat, (np.arange(size) + 0.5) / size)
        for _ in range(iterations):
            labels = np.searchsorted((codes[1:] + codes[:-1]) / 2, flat)
            counts = np.bincount(labels, minlength=size)
            sums = np.bincount(labels, weights=flat, minlength=size)
            codes = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), codes))
            codes[0], codes[-1] = distinct[0], distinct[-1]  # the extremes exact: the largest scale stays the largest
    codes = np.array([float(f"{code:.7g}") for code in codes])  # what meta.json holds: float32's precision
    labels = np.searchsorted((codes[1:].astype(np.float64) + codes[:-1]) / 2, flat)
    return codes, labels.astype(np.uint8).reshape(values.shape)


def _pack_quats(quats_wxyz: np.ndarray) -> np.ndarray:
    """``[N, 4]`` RGBA: the three smaller components (largest made positive) at 8 bits, its index as the tag."""
    q = quats_wxyz / np.linalg.norm(quats_wxyz, axis=1, keepdims=True).clip(1e-12)
    largest = np.abs(q).argmax(axis=1)
    q = q * np.where(q[np.arange(len(q)), largest] < 0, -1.0, 1.0)[:, None]
    others = OTHERS[largest]
    kept = np.take_along_axis(q, others, axis=1) * math.sqrt(2.0)
    rgb = np.clip(np.round((kept * 0.5 + 0.5) * 255.0), 0, 255)
    return np.concatenate([rgb, (ROTATION_TAG + largest)[:, None]], axis=1).astype(np.uint8)


def _unpack_quats(pixels: np.ndarray) -> np.ndarray:
    kept = (pixels[:, :3] / 255.0 * 2.0 - 1.0) / math.sqrt(2.0)
    largest = pixels[:, 3].astype(np.int64) - ROTATION_TAG
    valid = (largest >= 0) & (largest <= 3)
    largest = np.where(valid, largest, 0)
    q = np.zeros((len(pixels), 4))
    others = OTHERS[largest]
    np.put_along_axis(q, others, kept, axis=1)
    q[np.arange(len(q)), largest] = np.sqrt(np.clip(1.0 - (kept**2).sum(axis=1), 0.0, None))
    q[~valid] = (1.0, 0.0, 0.0, 0.0)
    return q


def palette_size(count: int) -> int:
    """SH rest palette entries for ``count`` Gaussians (``PALETTE_SHARE`` of them, at least one, at most 64k)."""
    return max(1, min(MAX_PALETTE, count, round(count * PALETTE_SHARE)))


def sog_files(gaussians: CompactGaussians, seed: int = 0) -> dict[str, bytes]:
    """The files of a SOG (``meta.json`` last), Gaussians in Morton order."""
    n = gaussians.num_gaussians
    if n == 0:
        raise SogError("a SOG needs at least one Gaussian; this splat has none")
    width, height = _side_lengths(n)
    if width > MAX_SIDE or height > MAX_SIDE:
        raise SogError(f"{n} Gaussians need {width}x{height} images, beyond WebP's {MAX_SIDE}; prune the splat first")
    columns = ply_properties(gaussians)
    order = morton_order(np.stack([columns[a] for a in "xyz"], axis=1))
    columns = {name: column[order].astype(np.float64) for name, column in columns.items()}
    opaque = np.full((n, 1), 255, dtype=np.uint8)
    files, meta = {}, {"version": VERSION, "asset": {"generator": "distilled3dgs_ns"}, "count": n}

    logs = _log_transform(np.stack([columns[a] for a in "xyz"], axis=1))
    low, high = logs.min(axis=0), logs.max(axis=0)
    fixed = np.round((logs - low) / np.where(high > low, high - low, 1.0) * 65535.0).astype(np.uint16)
    files["means_l.webp"] = _webp(np.concatenate([fixed & 0xFF, opaque], axis=1).astype(np.uint8), width, height)
    files["means_u.webp"] = _webp(np.concatenate([fixed >> 8, opaque], axis=1).astype(np.uint8), width, height)
    meta["means"] = {"mins": low.tolist(), "maxs": high.tolist(), "files": ["means_l.webp", "means_u.webp"]}

    quats = np.stack([columns[f"rot_{i}"] for i in range(4)], axis=1)
    files["quats.webp"] = _webp(_pack_quats(quats), width, height)
    meta["quats"] = {"files": ["quats.webp"]}

    codebook, labels = scalar_codebook(np.stack([columns[f"scale_{i}"] for i in range(3)], axis=1))
    files["scales.webp"] = _webp(np.concatenate([labels, opaque], axis=1), width, height)
    meta["scales"] = {"codebook": codebook.tolist(), "files": ["scales.webp"]}

    codebook, labels = scalar_codebook(np.stack([columns[f"f_dc_{i}"] for i in range(3)], axis=1))
    alpha = np.clip(np.round(1.0 / (1.0 + np.exp(-columns["opacity"])) * 255.0), 0, 255).astype(np.uint8)
    files["sh0.webp"] = _webp(np.concatenate([labels, alpha[:, None]], axis=1), width, height)
    meta["sh0"] = {"codebook": codebook.tolist(), "files": ["sh0.webp"]}

    if gaussians.sh_degree > 0:
        codes, labels = sh_palette(gaussians, seed)
        palette = (codes, labels[order])
        meta["shN"] = _write_palette(columns, palette, gaussians.sh_degree, files, (width, height))
    files["meta.json"] = json.dumps(meta, separators=(",", ":")).encode()
    return files


def sh_palette(gaussians: CompactGaussians, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The SH rest as palette entries ``[P, 3 (K - 1)]`` (channel-major, as the PLY stores them) and each Gaussian's
    entry ``[N]``: the Gaussians' own codebook when every one is quantised (a compact scene, fine-tuned with its
    codes: what the palette then costs is already trained away), else a k-means of their vectors."""
    g = gaussians
    n = g.num_gaussians
    if g.num_vq == n and 0 < g.codebook_size <= MAX_PALETTE:
        return g.codebook.transpose(1, 2).reshape(g.codebook_size, -1).double().cpu().numpy(), g.indices.cpu().numpy()
    vectors = g.features_rest.transpose(1, 2).reshape(n, -1).detach().double().cpu()
    palette = train_codebook(vectors, palette_size(n), KMEANS_ITERATIONS, seed=seed, progress=False)
    return palette.codes.double().numpy(), palette.assignment.numpy()


def _write_palette(
    columns: dict[str, np.ndarray],
    palette: tuple[np.ndarray, np.ndarray],
    degree: int,
    files: dict[str, bytes],
    size: tuple[int, int],
) -> dict:
    """The palette's two images (entries, per Gaussian labels in file order) and its ``meta.json`` entry."""
    n, per_channel = len(columns["x"]), (degree + 1) ** 2 - 1
    codes, labels = palette
    entries = len(codes)
    codebook, indices = scalar_codebook(codes)  # [P, 3K]
    rows = math.ceil(entries / PALETTE_COLUMNS)
    texels = np.zeros((rows * PALETTE_COLUMNS, per_channel, 4), dtype=np.uint8)
    texels[:entries, :, :3] = indices.reshape(entries, 3, per_channel).transpose(0, 2, 1)
    texels[:, :, 3] = 255
    files["shN_centroids.webp"] = _webp(texels.reshape(-1, 4), PALETTE_COLUMNS * per_channel, rows)
    pixels = np.stack([labels & 0xFF, labels >> 8, np.zeros(n), np.full(n, 255)], axis=1).astype(np.uint8)
    files["shN_labels.webp"] = _webp(pixels, *size)
    return {
        "count": entries,
        "bands": degree,
        "codebook": codebook.tolist(),
        "files": ["shN_centroids.webp", "shN_labels.webp"],
    }


def sog_bytes(gaussians: CompactGaussians) -> bytes:
    """The bundled ``.sog``: a zip of the images (stored: WebP is compressed already) and ``meta.json``
    (deflated), without a comment, as the engine's bundle reader expects."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, data in sog_files(gaussians).items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if name.endswith(".json") else zipfile.ZIP_STORED
            bundle.writestr(info, data)
    return buffer.getvalue()


def write_sog(path: Path | str, gaussians: CompactGaussians) -> int:
    """Write the Gaussians as a bundled ``.sog``; returns its size in bytes."""
    return write_atomic(path, sog_bytes(gaussians))


def _read_bundle(path: Path) -> tuple[dict, dict[str, bytes]]:
    try:
        with zipfile.ZipFile(path) as bundle:
            files = {name: bundle.read(name) for name in bundle.namelist()}
        meta = json.loads(files["meta.json"])
    except (OSError, zipfile.BadZipFile, KeyError, ValueError) as error:
        raise SogError(f"{path}: not a readable SOG bundle ({error}); write it again") from None
    if not isinstance(meta, dict) or meta.get("version") != VERSION:
        raise SogError(f"{path}: only SOG version {VERSION} is read (meta.json says {meta.get('version')!r})")
    return meta, files


def _pixels(path: Path, files: dict[str, bytes], name: str, count: int) -> np.ndarray:
    """The first ``count`` pixels ``[count, 4]`` of the image ``name``."""
    try:
        image = np.asarray(Image.open(io.BytesIO(files[name])).convert("RGBA")).reshape(-1, 4)
    except (KeyError, OSError) as error:
        raise SogError(f"{path}: image {name} missing or unreadable ({error}); write the file again") from None
    if len(image) < count:
        raise SogError(f"{path}: image {name} holds {len(image)} pixels, fewer than {count} Gaussians")
    return image[:count].astype(np.int64)


def read_sog(path: Path | str) -> CompactGaussians:
    """The Gaussians of a bundled ``.sog`` (version 2), in splatfacto's parametrisation and the file's order."""
    path = Path(path)
    meta, files = _read_bundle(path)
    try:
        n = int(meta["count"])
        image = {key: meta[key]["files"] for key in ("means", "quats", "scales", "sh0")}
        low, high = np.array(meta["means"]["mins"]), np.array(meta["means"]["maxs"])
        scale_codes, dc_codes = np.array(meta["scales"]["codebook"]), np.array(meta["sh0"]["codebook"])
    except (KeyError, TypeError, ValueError) as error:
        raise SogError(f"{path}: meta.json lacks {error}; write the file again") from None
    fixed = _pixels(path, files, image["means"][0], n)[:, :3] | _pixels(path, files, image["means"][1], n)[:, :3] << 8
    logs = low + (high - low) * fixed / 65535.0
    means = np.sign(logs) * np.expm1(np.abs(logs))
    sh0 = _pixels(path, files, image["sh0"][0], n)
    rest = np.zeros((n, 0, 3))
    if "shN" in meta:
        rest = _read_palette(path, meta["shN"], files, n)
    return CompactGaussians.from_viewer_fields(
        means=torch.from_numpy(means),
        log_scales=torch.from_numpy(scale_codes[_pixels(path, files, image["scales"][0], n)[:, :3]]),
        quats=torch.from_numpy(_unpack_quats(_pixels(path, files, image["quats"][0], n))),
        alphas=torch.from_numpy(sh0[:, 3] / 255.0),
        sh_dc=torch.from_numpy(dc_codes[sh0[:, :3]]),
        sh_rest=torch.from_numpy(rest),
    )


def _read_palette(path: Path, shn: dict, files: dict[str, bytes], n: int) -> np.ndarray:
    """Each Gaussian's SH rest ``[N, K - 1, 3]`` from its palette entry (a label past the palette: zeros)."""
    try:
        entries, degree, codebook = int(shn["count"]), int(shn["bands"]), np.array(shn["codebook"])
        centroid_file, label_file = shn["files"]
    except (KeyError, TypeError, ValueError) as error:
        raise SogError(f"{path}: meta.json's shN lacks {error}; write the file again") from None
    per_channel = (degree + 1) ** 2 - 1
    texels = _pixels(path, files, centroid_file, math.ceil(entries / PALETTE_COLUMNS) * PALETTE_COLUMNS * per_channel)
    palette = codebook[texels[:, :3]].reshape(-1, per_channel, 3)[:entries]  # [P, K - 1, 3]
    labels = _pixels(path, files, label_file, n)
    labels = labels[:, 0] | labels[:, 1] << 8
    rest = np.zeros((n, per_channel, 3))
    inside = labels < entries
    rest[inside] = palette[labels[inside]]
    return rest
