"""benchmarks/real_captures.py turns a posed photo repository into a nerfstudio-data folder that nerfstudio's own
dataparser reads with intrinsics matching the smaller images (a wrong focal length would train a blurred scene)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO_ROOT
from PIL import Image

WIDTH, HEIGHT = 120, 200  # the source's photos (portrait, as the fox capture's)


@pytest.fixture
def real_captures(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    import real_captures

    return real_captures


def _posed_repository(root):
    """The fox capture's layout: data/nerf/fox/transforms.json naming four photos, one of them absent."""
    folder = root / "data" / "nerf" / "fox"
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    frames = []
    for i in range(4):
        angle = i * np.pi / 8
        pose = np.eye(4)
        pose[:3, :3] = [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
        pose[:3, 3] = [3 * np.sin(angle), 0.1 * i, 3 * np.cos(angle)]
        frames.append({"file_path": f"images/{i:04d}.jpg", "sharpness": 30.0, "transform_matrix": pose.tolist()})
        if i != 2:
            pixels = rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / "images" / f"{i:04d}.jpg")
    meta = {"fl_x": 150.0, "fl_y": 148.0, "cx": 61.0, "cy": 99.0, "w": WIDTH, "h": HEIGHT, "k1": 0.05, "k2": -0.08}
    meta |= {"p1": 0.001, "p2": 0.0, "aabb_scale": 4, "camera_angle_x": 0.7, "frames": frames}
    (folder / "transforms.json").write_text(json.dumps(meta))
    return root


def test_posed_capture_is_downsized_with_its_intrinsics_and_read_by_nerfstudio(real_captures, tmp_path):
    source = _posed_repository(tmp_path / "repo")
    out = tmp_path / "fox"
    assert real_captures.main(["fox", "--source", str(source), "--output-dir", str(out), "--width", "30"]) == 0
    meta = json.loads((out / "transforms.json").read_text())
    assert [f["file_path"] for f in meta["frames"]] == ["images/0000.png", "images/0001.png", "images/0003.png"]
    assert (meta["w"], meta["h"]) == (30, 50)
    assert meta["fl_x"] == pytest.approx(150.0 / 4) and meta["cy"] == pytest.approx(99.0 / 4)
    assert meta["k1"] == 0.05  # distortion lives in normalised coordinates: unchanged
    assert "aabb_scale" not in meta and "sharpness" not in meta["frames"][0]
    for frame in meta["frames"]:
        assert Image.open(out / frame["file_path"]).size == (30, 50)

    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    parser = NerfstudioDataParserConfig(data=out, eval_mode="all", load_3D_points=False).setup()
    cameras = parser.get_dataparser_outputs(split="train").cameras
    assert cameras.width.flatten().tolist() == [30] * 3 and cameras.height.flatten().tolist() == [50] * 3
    assert cameras.fx.flatten().tolist() == pytest.approx([37.5] * 3)


def test_a_bare_git_mirror_is_a_source_too(real_captures, tmp_path):
    work = _posed_repository(tmp_path / "repo")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q", str(work)], check=True)
    subprocess.run([*git, "-C", str(work), "add", "."], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-q", "-m", "photos"], check=True)
    bare = tmp_path / "mirror.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    out = tmp_path / "fox"
    assert real_captures.main(["fox", "--source", str(bare), "--output-dir", str(out), "--width", "60"]) == 0
    assert len(json.loads((out / "transforms.json").read_text())["frames"]) == 3


def test_an_existing_output_folder_is_refused_in_one_line(tmp_path):
    (tmp_path / "fox").mkdir()
    script = REPO_ROOT / "benchmarks" / "real_captures.py"
    result = subprocess.run(
        [sys.executable, str(script), "fox", "--output-dir", str(tmp_path / "fox")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0 and result.stderr.strip().endswith("choose another --output-dir.")
