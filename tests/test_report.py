"""The report's colour-corrected PSNR: it forgives a photo's exposure, not a wrong picture, and the report shows it."""

from __future__ import annotations

import torch

from distilled3dgs_ns.evaluation import colour_corrected_psnr
from distilled3dgs_ns.report import colour_corrected_difference, markdown_table


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


def test_colour_correction_forgives_exposure_not_structure():
    generator = torch.Generator().manual_seed(0)
    photo = torch.rand(24, 32, 3, generator=generator) * 0.8 + 0.1
    darker = photo * 0.7 + 0.03  # the same picture at another exposure
    assert _psnr(darker, photo) < 20 and colour_corrected_psnr(darker, photo) > 40
    other = torch.rand(24, 32, 3, generator=generator) * 0.8 + 0.1  # another picture
    assert colour_corrected_psnr(other, photo) < 15


def test_the_report_has_the_colour_corrected_column_and_difference():
    row = {"psnr": 19.75, "cc_psnr": 21.76, "ssim": 0.74, "lpips": None, "num_gaussians": 12619}
    row |= {"size_mb": 3.1, "render_ms": 15.0, "train_s": 234.0}
    old = row | {"cc_psnr": None}  # a record from before the column
    table = markdown_table({"student": row, "baseline-no-kd": old})
    assert "PSNR (colour-corrected)" in table.splitlines()[0]
    assert "| student | 19.75 | 21.76 |" in table and "| baseline-no-kd | 19.75 | n/a |" in table
    assert colour_corrected_difference(row, row | {"cc_psnr": 21.67}) == "; colour-corrected +0.09 dB"
    assert colour_corrected_difference(row, old) == ""
