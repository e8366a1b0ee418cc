"""End to end on the CPU, through the real command lines: ns-train a small teacher, ``distilled3dgs-export
compact`` / ``decode`` against ``ns-export gaussian-splat``, a quantised and fine-tuned export, ``info``, and errors.
Uses the real lego-100 scene from shared/ when present, the embedded scene otherwise."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import e2e_scene, run_cli

STEPS = 30

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e-compact")


@pytest.fixture(scope="module")
def config(tmp_path_factory, workdir) -> Path:
    scene = e2e_scene(tmp_path_factory.mktemp("scene"))
    run_cli(
        [
            "ns-train", "distilled3dgs-teacher",
            "--data", str(scene),
            "--output-dir", "outputs",
            "--experiment-name", "teacher",
            "--timestamp", "run",
            "--max-num-iterations", str(STEPS),
            "--steps-per-save", "100",
            "--machine.device-type", "cpu",
            "--vis", "tensorboard",
            "--pipeline.model.num-random", "2000",
            "--pipeline.model.background-color", "white",
            "blender-data",
        ],
        cwd=workdir,
    )  # fmt: skip
    return workdir / "outputs" / "teacher" / "distilled3dgs-teacher" / "run" / "config.yml"


def _vertices(path: Path) -> dict[str, np.ndarray]:
    from plyfile import PlyData

    vertex = PlyData.read(str(path))["vertex"]
    return {p.name: np.asarray(vertex[p.name]) for p in vertex.properties}


def test_decoded_compact_file_matches_ns_export(config, workdir):
    """Without VQ or fine-tuning the decoded PLY is nerfstudio's own export in the file's (Morton) order, each value
    within half a step of the file's fixed point (quaternions as rotations)."""
    from distilled3dgs_ns.compression import quantise, read_compact

    compact = workdir / "fixed.compact"
    export = ["distilled3dgs-export", "compact", "--load-config", str(config), "--output", str(compact)]
    run_cli([*export, "--vq-share", "0", "--finetune.steps", "0"], cwd=workdir)
    run_cli(["distilled3dgs-export", "decode", "--input", str(compact), "--output", "decoded.ply"], cwd=workdir)
    run_cli(["ns-export", "gaussian-splat", "--load-config", str(config), "--output-dir", "ns"], cwd=workdir)
    ours, theirs = _vertices(workdir / "decoded.ply"), _vertices(workdir / "ns" / "splat.ply")
    assert list(ours) == list(theirs) and len(ours["x"]) == len(theirs["x"]) > 0
    q = read_compact(compact).quantisation
    means = np.stack([theirs[axis] for axis in "xyz"], axis=1)
    order = np.argsort(quantise.position_codes(means, q), kind="stable")
    theirs = {name: column[order] for name, column in theirs.items()}
    half = {
        axis: (q.position_high[i] - q.position_low[i]) / (2**q.position_bits - 1) / 2 for i, axis in enumerate("xyz")
    }
    half |= {f"scale_{i}": (q.scale_range[1] - q.scale_range[0]) / 255 / 2 for i in range(3)}
    half |= {"opacity": (q.opacity_range[1] - q.opacity_range[0]) / 255 / 2}
    half |= {f"f_dc_{i}": (q.dc_high[i] - q.dc_low[i]) / 255 / 2 for i in range(3)}
    rest = len(q.sh_max) // 3  # the PLY is channel-major, the file coefficient-major
    half |= {f"f_rest_{c * rest + k}": q.sh_max[3 * k + c] / 127 / 2 for c in range(3) for k in range(rest)}
    for name, bound in half.items():
        assert (np.abs(ours[name] - theirs[name]) <= bound * (1 + 1e-5) + 1e-6).all(), name
    rotations = [np.stack([table[f"rot_{i}"] for i in range(4)], axis=1) for table in (ours, theirs)]
    unit = rotations[1] / np.linalg.norm(rotations[1], axis=1, keepdims=True)
    assert np.abs((rotations[0] * unit).sum(axis=1)).min() > 1 - 2e-4  # see test_compression.ROTATION_DOT


def test_quantised_finetuned_export_and_info(config, workdir):
    compact = workdir / "vq.compact"
    result = run_cli(
        ["distilled3dgs-export", "compact", "--load-config", str(config), "--output", str(compact),
         "--vq-share", "0.5", "--finetune.steps", "5", "--compression", "lzma"],
        cwd=workdir,
    )  # fmt: skip
    assert "vector-quantised" in result.stdout and "fine-tuning loss" in result.stdout
    info = run_cli(["distilled3dgs-export", "info", "--input", str(compact)], cwd=workdir)
    assert "vector-quantised" in info.stdout and "format v2" in info.stdout and "lzma" in info.stdout
    header = json.loads(
        run_cli(["distilled3dgs-export", "info", "--input", str(compact), "--json", "True"], workdir).stdout
    )
    assert header["num_vq"] == round(0.5 * header["num_gaussians"]) and header["codebook_size"] >= 1
    assert header["compression"] == "lzma" and header["metadata"]["options"]["finetune"]["steps"] == 5


def test_bad_input_ends_in_one_line(workdir):
    env = {**os.environ, "COLUMNS": "200"}
    for args in (
        ["compact", "--load-config", "missing/config.yml", "--output", "x.compact"],
        ["decode", "--input", "missing.compact", "--output", "x.ply"],
    ):
        result = subprocess.run(
            ["distilled3dgs-export", *args], cwd=workdir, capture_output=True, text=True, timeout=300, env=env
        )
        last_line = result.stderr.strip().splitlines()[-1]
        assert result.returncode == 2 and last_line.startswith("distilled3dgs-export: ")
        assert "Traceback" not in result.stderr
