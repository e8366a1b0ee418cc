"""Compact storage of a trained splat: fixed-point attributes in Morton order, K-means VQ of the SH coefficients
and fine-tuning (LightGaussian), a checked binary format, its decoding to a standard 3DGS PLY, and the viewers'
formats (SPZ, compressed PLY, .splat)."""

from distilled3dgs_ns.compression.codebook import Codebook, default_codebook_size, nearest_codes, train_codebook
from distilled3dgs_ns.compression.compact_format import (
    FORMAT_VERSION,
    CompactFormatError,
    CompactGaussians,
    read_compact,
    read_header,
    write_compact,
)
from distilled3dgs_ns.compression.compressed_ply import read_compressed_ply, write_compressed_ply
from distilled3dgs_ns.compression.encode import VQOptions, encode_gaussians, pack, visible_mask
from distilled3dgs_ns.compression.export import CompactOptions, export_compact, write_files
from distilled3dgs_ns.compression.finetune import FinetuneOptions, finetune_compact
from distilled3dgs_ns.compression.formats import FORMATS, format_of, read_gaussians
from distilled3dgs_ns.compression.model_io import apply_to_model, gaussians_of, model_params
from distilled3dgs_ns.compression.ply import ply_properties, write_ply
from distilled3dgs_ns.compression.splat import read_splat, write_splat
from distilled3dgs_ns.compression.spz import read_spz, write_spz

__all__ = [
    "FORMATS",
    "FORMAT_VERSION",
    "Codebook",
    "CompactFormatError",
    "CompactGaussians",
    "CompactOptions",
    "FinetuneOptions",
    "VQOptions",
    "apply_to_model",
    "default_codebook_size",
    "encode_gaussians",
    "export_compact",
    "finetune_compact",
    "format_of",
    "gaussians_of",
    "model_params",
    "nearest_codes",
    "pack",
    "ply_properties",
    "read_compact",
    "read_compressed_ply",
    "read_gaussians",
    "read_header",
    "read_splat",
    "read_spz",
    "train_codebook",
    "visible_mask",
    "write_compact",
    "write_compressed_ply",
    "write_files",
    "write_ply",
    "write_splat",
    "write_spz",
]
