"""``distilled3dgs-export``: write a trained splat as a compact file, save it in a format viewers open (SPZ,
compressed PLY, .splat, PLY), decode a compact file to a standard 3DGS PLY, or show what one holds.
Bad input ends with one line saying what is wrong and what to do, and exit status 2."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro
from nerfstudio.models.splatfacto import SplatfactoModel
from nerfstudio.pipelines.base_pipeline import Pipeline
from rich.console import Console
from rich.table import Table

from distilled3dgs_ns.checkpoints import load_pipeline
from distilled3dgs_ns.compression.compact_format import read_compact, read_header
from distilled3dgs_ns.compression.export import CompactOptions, export_compact, float32_ply_bytes
from distilled3dgs_ns.compression.formats import FORMATS, format_of, read_gaussians, suffixes
from distilled3dgs_ns.compression.frame import Similarity, to_capture
from distilled3dgs_ns.compression.model_io import gaussians_of
from distilled3dgs_ns.compression.ply import write_ply
from distilled3dgs_ns.errors import UserError, one_line_errors
from distilled3dgs_ns.names import FormatName

CONSOLE = Console(width=120)


class UsageError(UserError):
    """A problem with the command line's input; the message says what to do."""


def splat_pipeline(config: Path, data: Path | None, mode: Literal["test", "inference"]) -> Pipeline:
    """The trained pipeline of ``config``, refused in one line unless its model is a Gaussian splat."""
    pipeline = load_pipeline(config, data, mode)
    if not isinstance(pipeline.model, SplatfactoModel):
        raise UsageError(f"{config}: a {type(pipeline.model).__name__}, not a Gaussian splatting model")
    return pipeline


@dataclass(kw_only=True)
class Compact(CompactOptions):
    """Write a trained splat (teacher or student config.yml) as a compact file (about 0.6x the bytes of its SPZ at a
    smaller loss): positions, scales, rotations, opacities and colour in fixed point (12-21 / 8 / 7 / 8 / 8 bits),
    every Gaussian's SH rest coefficients from a K-means codebook (LightGaussian; --vq-share below 1 keeps those of
    the most significant at 8 bits), then fine-tuned on the training views with the code assignment fixed."""

    load_config: Path
    """config.yml of the trained model."""
    output: Path
    """The compact file to write (e.g. scene.compact)."""
    data: Path | None = None
    """The scene folder, when the config's data path (often relative to where ns-train ran) does not resolve here."""

    def main(self) -> None:
        pipeline = splat_pipeline(self.load_config, self.data, "test" if self.finetune.steps > 0 else "inference")
        figures = export_compact(pipeline, None, self.output, self, source=str(self.load_config))
        table = Table(title=f"{self.output}", show_header=False)
        rows = [
            ("Gaussians", f"{figures['num_gaussians']} ({figures['num_dropped_invisible']} invisible dropped)"),
            ("vector-quantised", f"{figures['num_vq']} ({figures['vq_share']:.0%}), {figures['codebook_size']} codes"),
            ("k-means distortion", f"{figures.get('kmeans_distortion', 0.0):.3g} (SH rest RMSE "
                                   f"{figures.get('vq_rmse', 0.0):.3g})"),
            ("size", f"{figures['size_mb']:.3f} MB ({figures['compression_ratio']:.1f}x smaller than the float32 PLY, "
                     f"{figures['ply_mb']:.3f} MB)"),
            ("time", f"{figures['export_s']:.1f} s"),
        ]  # fmt: skip
        if self.finetune.steps > 0:
            rows.append(
                ("fine-tuning loss", f"{figures['finetune_loss_first']:.4f} -> {figures['finetune_loss_last']:.4f}")
            )
        for row in rows:
            table.add_row(*row)
        CONSOLE.print(table)


@dataclass
class Save:
    """Save a trained splat (teacher or student config.yml, or a compact or viewer file) in a format the splat
    viewers open: ``.spz`` (Niantic's SPZ: SuperSplat, PlayCanvas, Spark), ``.sog`` (PlayCanvas' SOG: SuperSplat,
    PlayCanvas, Spark; smallest from a compact file, whose codebook becomes its palette), ``.glb`` / ``.spz.glb``
    (glTF's KHR_gaussian_splatting, float32 or SPZ-compressed: 3D tool chains), ``.compressed.ply`` (PlayCanvas'
    compressed PLY), ``.splat`` (antimatter15's, no view-dependent colour) or ``.ply`` (the float32 3DGS PLY). The
    format follows the suffix of --output unless --format names it. A trained model is written in the capture's
    frame (see --frame). Sizes and losses of each: docs/formats.md."""

    output: Path
    """The file to write: scene.spz, scene.sog, scene.glb, scene.spz.glb, scene.compressed.ply, scene.splat or
    scene.ply."""
    load_config: Path | None = None
    """config.yml of the trained model (or give --input)."""
    input: Path | None = None
    """A compact or viewer file (SPZ, SOG, .glb, compressed PLY, .splat) to convert instead of a trained model."""
    format: FormatName | None = None
    """The format to write; by default the one --output's suffix names."""
    frame: Literal["capture", "nerfstudio"] = "capture"
    """capture: undo the dataparser transform (dataparser_transforms.json beside the config), so the file sits where
    the capture (COLMAP, Polycam...) put the scene; nerfstudio: keep nerfstudio's frame (as ns-export 1.1.5 writes).
    A file given as --input keeps its frame."""
    data: Path | None = None
    """The scene folder, when the config's data path (often relative to where ns-train ran) does not resolve here."""

    def main(self) -> None:
        name = self.format or format_of(self.output)
        if name is None:
            raise UsageError(f"--output {self.output}: unknown format; end it in {suffixes()} or give --format")
        if (self.load_config is None) == (self.input is None):
            raise UsageError(
                "give one of --load-config (a trained model's config.yml) or --input (a compact or viewer file)"
            )
        if self.input is not None:
            if self.output.resolve() == self.input.resolve():
                raise UsageError(f"--output {self.output} is the input itself; choose another name")
            gaussians = read_gaussians(self.input)
        else:
            gaussians = gaussians_of(splat_pipeline(self.load_config, self.data, "inference").model)
            if self.frame == "capture":
                gaussians = to_capture(gaussians, Similarity.of_run(self.load_config))
        size = FORMATS[name].write(self.output, gaussians)
        ratio = float32_ply_bytes(gaussians.num_gaussians, gaussians.sh_degree) / size
        CONSOLE.print(
            f"Wrote {self.output} ({FORMATS[name].about.split(',')[0]}: {gaussians.num_gaussians} Gaussians, "
            f"{size / 1e6:.3f} MB, {size / max(gaussians.num_gaussians, 1):.1f} bytes per Gaussian"
            + (")" if name == "ply" else f", {ratio:.1f}x smaller than its PLY)")
        )


@dataclass
class Decode:
    """Decode a compact file into a standard 3DGS PLY (binary, Inria / ns-export gaussian-splat layout)."""

    input: Path
    """The compact file."""
    output: Path
    """The PLY file to write."""

    def main(self) -> None:
        if self.output.resolve() == self.input.resolve():
            raise UsageError(f"--output {self.output} is the compact file itself; choose another name, e.g. scene.ply")
        gaussians = read_compact(self.input)
        size = write_ply(self.output, gaussians, comment=f"Decoded from {self.input.name}")
        CONSOLE.print(f"Wrote {self.output} ({gaussians.num_gaussians} Gaussians, {size / 1e6:.3f} MB)")


@dataclass
class Info:
    """Check a compact file completely and show its header (counts, sections, the settings it was written with)."""

    input: Path
    """The compact file."""
    json: bool = False
    """Print the header as JSON."""

    def main(self) -> None:
        header = read_header(self.input)
        gaussians = read_compact(self.input)  # the full check: checksums, decoding, finiteness
        if self.json:
            print(json.dumps(header, indent=2))
            return
        size = self.input.stat().st_size
        ply = float32_ply_bytes(gaussians.num_gaussians, gaussians.sh_degree)
        CONSOLE.print(
            f"{self.input}: format v{header['format_version']}, {gaussians.num_gaussians} Gaussians, SH degree "
            f"{gaussians.sh_degree}, {gaussians.num_vq} vector-quantised with {gaussians.codebook_size} codes, "
            f"{header['compression']} payload; {size / 1e6:.3f} MB ({ply / size:.1f}x smaller than its float32 PLY)"
        )


Commands = tyro.conf.FlagConversionOff[
    Annotated[Compact, tyro.conf.subcommand(name="compact")]
    | Annotated[Save, tyro.conf.subcommand(name="save")]
    | Annotated[Decode, tyro.conf.subcommand(name="decode")]
    | Annotated[Info, tyro.conf.subcommand(name="info")]
]


def entrypoint(args: list[str] | None = None) -> None:
    """The ``distilled3dgs-export`` command."""
    command = tyro.cli(Commands, args=args)
    with one_line_errors("distilled3dgs-export", also=(OSError,)):
        command.main()


if __name__ == "__main__":
    entrypoint()
