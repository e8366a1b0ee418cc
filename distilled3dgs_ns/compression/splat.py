"""The antimatter15 ``.splat`` file, which the first web splat viewers (and most still) open: 32 bytes per Gaussian,
no view-dependent colour.

Per Gaussian, little endian: position (3 float32), linear scale (3 float32), RGBA (4 uint8: the SH DC as a colour,
opacity after the sigmoid) and the unit quaternion wxyz as 4 uint8 (``q * 128 + 128``). Gaussians go largest and
most opaque first, as the reference converter orders them, so a viewer that streams the file shows the bulk early.
The frame is the PLY's, unchanged. ``read_splat`` undoes it, for round trips (SH rest is zero: the format drops it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from nerfstudio.models.splatfacto import RGB2SH, SH2RGB

from distilled3dgs_ns.compression.compact_format import CompactGaussians
from distilled3dgs_ns.durable import write_atomic
from distilled3dgs_ns.errors import UserError

RECORD = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rotation", "u1", 4)])


class SplatFileError(UserError):
    """A .splat file that cannot be read; the message names the file."""


def splat_bytes(gaussians: CompactGaussians) -> bytes:
    """The whole ``.splat`` file for the Gaussians."""
    g = gaussians
    dc = g.features_dc if g.sh_degree > 0 else RGB2SH(torch.sigmoid(g.features_dc))
    alpha = torch.sigmoid(g.opacities).reshape(-1)
    rgba = torch.cat([SH2RGB(dc), alpha[:, None]], dim=1).detach().cpu().numpy()
    quats = torch.nn.functional.normalize(g.quats, dim=-1).detach().cpu().numpy()
    records = np.empty(g.num_gaussians, RECORD)
    records["position"] = g.means.detach().cpu().numpy()
    records["scale"] = torch.exp(g.scales).detach().cpu().numpy()
    records["rgba"] = np.clip(np.round(rgba * 255.0), 0, 255)
    records["rotation"] = np.clip(np.round(quats * 128.0 + 128.0), 0, 255)
    order = np.argsort(-(g.scales.sum(dim=-1).exp() * alpha).detach().cpu().numpy(), kind="stable")
    return records[order].tobytes()


def write_splat(path: Path | str, gaussians: CompactGaussians) -> int:
    """Write the Gaussians as a ``.splat`` file; returns its size in bytes."""
    return write_atomic(path, splat_bytes(gaussians))


def read_splat(path: Path | str, sh_degree: int = 0) -> CompactGaussians:
    """The Gaussians of a ``.splat`` file in splatfacto's parametrisation, with ``sh_degree`` bands of zero SH rest
    (so that a model of that degree can render them)."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) % RECORD.itemsize:
        raise SplatFileError(f"{path}: {len(data)} bytes are not whole 32-byte Gaussians; write it again")
    records = np.frombuffer(data, RECORD)
    rgba = torch.from_numpy(records["rgba"] / 255.0).clamp(1e-4, 1 - 1e-4)
    return CompactGaussians.from_viewer_fields(
        means=torch.from_numpy(records["position"].copy()),
        log_scales=torch.log(torch.from_numpy(records["scale"].copy()).clamp_min(1e-12)),
        quats=torch.nn.functional.normalize(torch.from_numpy((records["rotation"] - 128.0) / 128.0), dim=-1),
        alphas=rgba[:, 3],
        sh_dc=RGB2SH(rgba[:, :3]),
        sh_rest=torch.zeros(len(records), (sh_degree + 1) ** 2 - 1, 3),
    )
