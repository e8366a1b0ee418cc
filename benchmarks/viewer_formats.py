"""Every file format of one trained splat: bytes, bytes per Gaussian, test PSNR and PSNR against the model's renders.

Writes the model as each viewer format (in the capture's frame, as ``distilled3dgs-export save`` does), then the
compact file (vector quantised and fine-tuned), then the formats built on the compact scene (SOG, whose palette is
then the compact codebook), and evaluates what every file decodes to. Prints one markdown table.

    python benchmarks/viewer_formats.py --load-config outputs/demo/runs/student/distilled3dgs-student/run/config.yml \
        --output-dir outputs/formats
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tyro

from distilled3dgs_ns.checkpoints import load_pipeline
from distilled3dgs_ns.compression import FORMATS, apply_to_model, gaussians_of, read_gaussians, write_files
from distilled3dgs_ns.compression.frame import Similarity, from_capture
from distilled3dgs_ns.evaluation import evaluate_pipeline


@dataclass
class Args:
    load_config: Path
    """config.yml of a trained teacher or student."""
    output_dir: Path = Path("outputs/formats")
    """Where the files go."""
    finetune_steps: int = 2000
    """Fine-tuning steps of the compact file (the run's default)."""


def main(args: Args) -> None:
    pipeline = load_pipeline(args.load_config)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    frame = Similarity.of_run(args.load_config)
    model = evaluate_pipeline(pipeline, render_repeats=0, keep_rgb=True, label="the model")
    rows = [("model (float32 in memory)", None, model.figures["psnr"], None, 0.0)]
    count = gaussians_of(pipeline.model).num_gaussians  # what the files hold: the visible ones
    everything = write_files(pipeline, frame, args.output_dir, "model", list(FORMATS), None)  # the palettes: k-means
    files = [
        (f"{kind} (k-means palette)" if FORMATS[kind].from_compact else kind, *file)
        for kind, file in everything.items()
    ]
    built_on_compact = [kind for kind, fmt in FORMATS.items() if fmt.from_compact]
    compact = write_files(pipeline, frame, args.output_dir, "compact", built_on_compact, args.finetune_steps)
    files += [
        (kind if kind == "compact" else f"{kind} (from the compact file)", *file) for kind, file in compact.items()
    ]
    for label, path, seconds in files:
        if label in FORMATS and FORMATS[label].read is None:  # the float32 PLY: the model itself
            rows.append((label, path.stat().st_size, model.figures["psnr"], None, seconds))
            continue
        decoded = read_gaussians(path, pipeline.model.config.sh_degree)
        apply_to_model(pipeline.model, decoded if path.suffix == ".compact" else from_capture(decoded, frame))
        result = evaluate_pipeline(pipeline, render_repeats=0, reference=model.rgb, label=label)
        rows.append((label, path.stat().st_size, result.figures["psnr"], result.figures["psnr_vs_reference"], seconds))
    print(f"\n{args.load_config}: {count} Gaussians\n")
    print("| file | bytes | B/Gaussian | test PSNR | vs PLY | PSNR vs the model's renders | write (s) |")
    print("|---|---|---|---|---|---|---|")
    reference = rows[0][2]
    for label, size, psnr, versus, seconds in rows:
        size_text = "" if size is None else f"{size} | {size / count:.1f}"
        versus_text = "" if versus is None else f"{versus:.2f}"
        print(
            f"| {label} | {size_text or ' | '} | {psnr:.2f} | {psnr - reference:+.2f} | {versus_text} | {seconds:.1f} |"
        )


if __name__ == "__main__":
    main(tyro.cli(Args))
