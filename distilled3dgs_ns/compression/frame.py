"""Between nerfstudio's frame and the capture's: viewer files sit where the capture (COLMAP, Polycam...) put the scene.

A dataparser moves the scene into nerfstudio's frame, ``x_ns = s * (R x + t)`` (``dataparser_transforms.json``
beside every ``config.yml``). Files for other tools should be in the capture's own frame, so the inverse goes into
every Gaussian: positions, log scales (``- log s``), rotations (``R^T q``) and the view-dependent colour, whose SH
coefficients rotate with the directions: per band a ``(2l+1)`` square matrix, found here by least squares over sample
directions with the same SH bases the rasteriser evaluates (exact: each band is closed under rotation).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from distilled3dgs_ns.compression.compact_format import CompactGaussians
from distilled3dgs_ns.errors import UserError
from distilled3dgs_ns.names import DATAPARSER_TRANSFORMS
from distilled3dgs_ns.rasterization.sh import sh_bases

"""What ns-train writes beside config.yml: ``{"transform": 3x4 [R | t], "scale": s}``."""


@dataclass(frozen=True)
class Similarity:
    """``x -> scale * (rotation @ x + translation)``, a rotation (orthonormal, det 1) and a positive scale."""

    rotation: Tensor
    translation: Tensor
    scale: float

    @classmethod
    def of_run(cls, config_path: Path) -> Similarity:
        """The dataparser transform of the run whose ``config.yml`` is ``config_path`` (capture -> nerfstudio)."""
        path = Path(config_path).parent / DATAPARSER_TRANSFORMS
        try:
            saved = json.loads(path.read_text())
            matrix = torch.tensor(saved["transform"], dtype=torch.float64)
            scale = float(saved["scale"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UserError(
                f"{path}: cannot read the dataparser transform ({error}); pass --frame nerfstudio to keep "
                "nerfstudio's frame"
            ) from None
        return cls(matrix[:, :3], matrix[:, 3], scale)

    def inverse(self) -> Similarity:
        """``x = (1 / s) R^T x' - R^T t``, written in the same form."""
        back = self.rotation.T
        return Similarity(back, -self.scale * back @ self.translation, 1.0 / self.scale)

    @property
    def is_identity(self) -> bool:
        eye = torch.eye(3, dtype=self.rotation.dtype)
        return bool(torch.allclose(self.rotation, eye) and self.translation.abs().max() == 0 and self.scale == 1.0)


def sh_rotation(rotation: Tensor, degree: int) -> Tensor:
    """``[K-1, K-1]`` matrix M such that the SH rest coefficients of a colour function rotated by ``rotation`` are
    ``M @ rest`` (``f'(R d) = f(d)``)."""
    count = (degree + 1) ** 2
    golden = math.pi * (3.0 - math.sqrt(5.0))
    index = torch.arange(4 * count, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * index / len(index)
    ring = torch.sqrt(1.0 - z**2)
    directions = torch.stack([ring * torch.cos(golden * index), ring * torch.sin(golden * index), z], dim=-1)
    here = sh_bases(count, directions)[:, 1:]  # Y(d') at the rotated directions
    there = sh_bases(count, directions @ rotation.to(torch.float64))[:, 1:]  # Y(R^T d'), row-vector form
    return torch.linalg.lstsq(here, there).solution  # here @ M = there


def _quaternion(rotation: Tensor) -> Tensor:
    """wxyz of a rotation matrix (branch on the largest of the trace and the diagonal, for precision)."""
    m = rotation.to(torch.float64)
    if m.trace() > 0:
        s = 2 * torch.sqrt(m.trace() + 1)
        q = [s / 4, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2 * torch.sqrt(1 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, s / 4, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2 * torch.sqrt(1 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, s / 4, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2 * torch.sqrt(1 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, s / 4]
    return torch.stack(q)


def _multiply(p: Tensor, q: Tensor) -> Tensor:
    """Hamilton product of wxyz quaternions ``p [4]`` and ``q [N, 4]``."""
    w1, x1, y1, z1 = p
    w2, x2, y2, z2 = q.unbind(-1)
    return torch.stack(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ],
        dim=-1,
    )


def transform_gaussians(gaussians: CompactGaussians, move: Similarity) -> CompactGaussians:
    """The Gaussians after ``move`` (positions, scales, rotations and view-dependent colour); VQ codes rotate too.
    The identity returns them as they are."""
    if move.is_identity:
        return gaussians
    g = gaussians
    # in float64 on the CPU, where the move lives (a model on CUDA; MPS has no float64), then back to the model's
    rotation, translation = move.rotation.to(torch.float64), move.translation.to(torch.float64)
    means = move.scale * (g.means.cpu().double() @ rotation.T + translation)
    quats = _multiply(_quaternion(rotation), torch.nn.functional.normalize(g.quats.cpu().double(), dim=-1))
    rest, codebook = g.features_rest, g.codebook
    if g.sh_degree > 0:
        turn = sh_rotation(rotation, g.sh_degree).to(g.features_rest)
        rest = torch.einsum("jk,nkc->njc", turn, g.features_rest)
        codebook = torch.einsum("jk,nkc->njc", turn.to(g.codebook), g.codebook) if g.codebook.numel() else g.codebook
    return replace(
        g,
        means=means.to(g.means),
        scales=g.scales + math.log(move.scale),
        quats=quats.to(g.quats),
        features_rest=rest,
        codebook=codebook,
        quantisation=None,
    )


def to_capture(gaussians: CompactGaussians, dataparser: Similarity) -> CompactGaussians:
    """Gaussians moved from nerfstudio's frame into the capture's (``dataparser``: the run's ``Similarity.of_run``)."""
    return transform_gaussians(gaussians, dataparser.inverse())


def from_capture(gaussians: CompactGaussians, dataparser: Similarity) -> CompactGaussians:
    """Gaussians in the capture's frame (a viewer file) moved into the nerfstudio frame of the run's model."""
    return transform_gaussians(gaussians, dataparser)
