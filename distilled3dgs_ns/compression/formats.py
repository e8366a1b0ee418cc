"""The splat file formats viewers open, by name and suffix: one table that ``distilled3dgs-export save``,
``distilled3dgs-eval --compact`` and ``distilled3dgs-run`` all read, so a format is added in one place."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from distilled3dgs_ns.compression.compact_format import CompactGaussians, read_compact
from distilled3dgs_ns.compression.compressed_ply import read_compressed_ply, write_compressed_ply
from distilled3dgs_ns.compression.glb import read_glb, write_glb, write_spz_glb
from distilled3dgs_ns.compression.ply import write_ply
from distilled3dgs_ns.compression.sog import read_sog, write_sog
from distilled3dgs_ns.compression.splat import read_splat, write_splat
from distilled3dgs_ns.compression.spz import read_spz, write_spz
from distilled3dgs_ns.names import FormatName


@dataclass(frozen=True)
class ViewerFormat:
    """A file format: its suffix, writer, reader (None: we only write it) and what it is, for ``--help``."""

    suffix: str
    write: Callable[[Path, CompactGaussians], int]
    read: Callable[[Path, int], CompactGaussians] | None
    about: str
    from_compact: bool = False
    """The SH rest is a palette of whole coefficient vectors: where the run also writes the compact file (vector
    quantised, then fine-tuned with its codes fixed), this format is written from that scene, whose codebook becomes
    the palette at no further loss, instead of a k-means of the model's coefficients."""


"""The keys of ``FORMATS``, for command-line options."""

FORMATS: dict[FormatName, ViewerFormat] = {
    "spz": ViewerFormat(".spz", write_spz, lambda path, _: read_spz(path), "Niantic's SPZ, ~20 B/Gaussian"),
    "sog": ViewerFormat(
        ".sog",
        write_sog,
        lambda path, _: read_sog(path),
        "PlayCanvas' SOG (WebP images in a zip), ~17 B/Gaussian from a compact file",
        from_compact=True,
    ),
    "glb": ViewerFormat(
        ".glb", write_glb, lambda path, _: read_glb(path), "glTF KHR_gaussian_splatting, float32, ~236 B/Gaussian"
    ),
    "glb-spz": ViewerFormat(
        ".spz.glb",
        write_spz_glb,
        lambda path, _: read_glb(path),
        "glTF KHR_gaussian_splatting with its SPZ compression, the SPZ's size",
    ),
    "compressed-ply": ViewerFormat(
        ".compressed.ply",
        write_compressed_ply,
        lambda path, _: read_compressed_ply(path),
        "PlayCanvas' compressed PLY, ~16 B/Gaussian + 1 B per SH coefficient",
    ),
    "splat": ViewerFormat(".splat", write_splat, read_splat, "antimatter15's .splat, 32 B/Gaussian, no SH"),
    "ply": ViewerFormat(".ply", write_ply, None, "the float32 3DGS PLY (ns-export's)"),
}
"""Format name -> format; suffixes are matched longest first (``.compressed.ply`` before ``.ply``)."""


def format_of(path: Path | str) -> str | None:
    """The name of the format whose suffix ends ``path`` (case-insensitive), or None."""
    name = Path(path).name.lower()
    matches = [key for key, fmt in FORMATS.items() if name.endswith(fmt.suffix)]
    return max(matches, key=lambda key: len(FORMATS[key].suffix), default=None)


def suffixes() -> str:
    """The suffixes, for messages: ``.spz, .compressed.ply, .splat or .ply``."""
    names = [fmt.suffix for fmt in FORMATS.values()]
    return ", ".join(names[:-1]) + " or " + names[-1]


def read_gaussians(path: Path, sh_degree: int = 0) -> CompactGaussians:
    """The Gaussians of a file that a model can render, by suffix: SPZ, compressed PLY, ``.splat`` (no SH rest:
    ``sh_degree`` bands of zeros, to fit the model), else our compact file."""
    fmt = FORMATS.get(format_of(path) or "")
    return fmt.read(Path(path), sh_degree) if fmt is not None and fmt.read is not None else read_compact(path)
