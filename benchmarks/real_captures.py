"""Build the real photo captures the method is tuned and judged on, small enough for a CPU.

Synthetic scenes have exact poses, constant exposure and no clutter; the teachers overfit real photos in ways they
never show (docs/results.md, "Real photo captures"). Neither source licenses redistribution of its photos, so the
project ships this script, not the images: it reads a checkout (or bare git directory) of the public repository, or
clones it when none is given, downsizes the photos and writes a nerfstudio-data folder.

- ``fox``: 50 handheld photos of a fox figure in a room (NVlabs/instant-ngp, data/nerf/fox, NVIDIA Source Code
  License: non-commercial research), with the capture's own poses (transforms.json).
- ``monstree``: 23 photos around a tree outdoors, unbounded (alicevision/dataset_monstree, full/), posed here by
  ``ns-process-data images`` with Debian's COLMAP (``--matching-method exhaustive``: the default vocabulary tree is a
  download and fails offline), so the scene has COLMAP's sparse points (sparse_pc.ply) and tests the SfM start.

    python benchmarks/real_captures.py fox --output-dir data/real/fox
    python benchmarks/real_captures.py monstree --source /path/to/dataset_monstree --output-dir data/real/monstree
    python benchmarks/real_captures.py monstree --sfm-depth --output-dir data/real/monstree-sfm-depth

``--sfm-depth`` (COLMAP captures) also writes each photo's sparse depth map from COLMAP's points, at the training
size: what ``ns-process-data images --use-sfm-depth`` writes at full size, for ``distilled3dgs-run --depth metric``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Capture:
    repository: str
    folder: str
    posed: bool  # the source has poses (transforms.json); otherwise COLMAP poses it
    width: int  # training width in pixels; height follows the photos' aspect


CAPTURES = {
    "fox": Capture("NVlabs/instant-ngp", "data/nerf/fox", posed=True, width=90),
    # The same photos posed by COLMAP, as a user's own capture would be: its points are the start
    "fox-colmap": Capture("NVlabs/instant-ngp", "data/nerf/fox/images", posed=False, width=90),
    "monstree": Capture("alicevision/dataset_monstree", "full", posed=False, width=160),
}
COLMAP_WIDTH = 480  # photos are posed at this width: enough features, minutes on 2 cores


class Source:
    """Files of a repository, from a work tree or a bare git directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bare = not (root / ".git").exists() and (root / "HEAD").exists()

    def list(self, folder: str) -> list[str]:
        if not self.bare:
            return sorted(str(p.relative_to(self.root)) for p in (self.root / folder).rglob("*") if p.is_file())
        out = subprocess.run(
            ["git", "--git-dir", str(self.root), "ls-tree", "-r", "--name-only", "HEAD", folder + "/"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return sorted(out.split())

    def read(self, path: str) -> bytes:
        if not self.bare:
            return (self.root / path).read_bytes()
        return subprocess.run(
            ["git", "--git-dir", str(self.root), "show", f"HEAD:{path}"], check=True, capture_output=True
        ).stdout


def clone(repository: str, into: Path) -> Path:
    target = into / repository.replace("/", "+")
    if not target.exists():
        print(f"cloning {repository} into {target}", flush=True)
        subprocess.run(["git", "clone", "--depth", "1", f"https://github.com/{repository}", str(target)], check=True)
    return target


def photos(source: Source, folder: str, width: int) -> Iterator[tuple[str, Image.Image]]:
    """Every readable JPEG/PNG under folder at ``width``, one at a time (a full-size photo is tens of MB decoded; a
    bare mirror may lack some large blobs)."""
    for path in source.list(folder):
        if Path(path).suffix.lower() not in {".jpg", ".jpeg", ".png"}:
            continue
        try:
            image = Image.open(io.BytesIO(source.read(path))).convert("RGB")
        except (subprocess.CalledProcessError, OSError):  # a mirror without the blob, or not an image
            print(f"skipping {path}: not readable", file=sys.stderr)
            continue
        yield path, resize(image, width)


def resize(image: Image.Image, width: int) -> Image.Image:
    height = round(image.height * width / image.width)
    return image.resize((width, height), Image.Resampling.LANCZOS)


def scale_intrinsics(meta: dict, factor: float, width: int, height: int) -> None:
    """Pinhole terms scale with the image; OpenCV distortion terms are in normalised coordinates and do not."""
    for key in ("fl_x", "fl_y", "cx", "cy"):
        if key in meta:
            meta[key] = meta[key] * factor
    meta["w"], meta["h"] = width, height


def downsize_folder(folder: Path, width: int) -> None:
    """Rewrite a nerfstudio-data folder's images at `width` (PNG, lossless) and its intrinsics to match."""
    meta = json.loads((folder / "transforms.json").read_text())
    factor = None
    for frame in meta["frames"]:
        path = folder / frame["file_path"]
        image = Image.open(path).convert("RGB")
        small = resize(image, width)
        factor = small.width / image.width
        path.unlink()
        frame["file_path"] = str(Path(frame["file_path"]).with_suffix(".png"))
        small.save(folder / frame["file_path"])
        if "fl_x" in frame:
            scale_intrinsics(frame, factor, small.width, small.height)
    if "fl_x" in meta and factor is not None:
        scale_intrinsics(meta, factor, small.width, small.height)
    (folder / "transforms.json").write_text(json.dumps(meta, indent=2))


def build_posed(source: Source, capture: Capture, output: Path, width: int) -> None:
    meta = json.loads(source.read(f"{capture.folder}/transforms.json"))
    (output / "images").mkdir(parents=True)
    present = set(source.list(capture.folder))
    frames = []
    for frame in meta["frames"]:
        path = f"{capture.folder}/{frame['file_path']}"
        if path not in present:  # the published transforms.json names a few photos the repository lacks
            print(f"skipping {path}: not in the repository", file=sys.stderr)
            continue
        name = Path(frame["file_path"]).name
        (output / "images" / name).write_bytes(source.read(path))
        frame["file_path"] = f"images/{name}"
        frame.pop("sharpness", None)
        frames.append(frame)
    meta["frames"] = frames
    for key in ("aabb_scale", "scale", "offset", "camera_angle_x", "camera_angle_y"):
        meta.pop(key, None)
    meta["camera_model"] = "OPENCV"
    (output / "transforms.json").write_text(json.dumps(meta, indent=2))
    downsize_folder(output, width)


def build_colmap(source: Source, capture: Capture, output: Path, width: int) -> None:
    for tool in ("colmap", "ffmpeg"):  # ns-process-data copies the photos with ffmpeg
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed: `apt-get install colmap ffmpeg` (Debian's COLMAP 3.8 works offline).")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "photos"
        raw.mkdir()
        for path, image in photos(source, capture.folder, COLMAP_WIDTH):
            image.save(raw / (Path(path).stem + ".jpg"), quality=95)
        print(f"posing {len(list(raw.iterdir()))} photos with COLMAP (exhaustive matching, CPU)", flush=True)
        env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
        command = ["ns-process-data", "images", "--data", str(raw), "--output-dir", str(output)]
        command += ["--matching-method", "exhaustive", "--no-gpu", "--num-downscales", "0"]
        subprocess.run(command, check=True, env=env)
    downsize_folder(output, width)


SFM_MAX_ERROR = 2.5  # px: the reprojection error above which a COLMAP point is not trusted (nerfstudio's default)
SFM_MIN_VIEWS = 2  # photos a point must be seen in


def write_sfm_depth(folder: Path) -> list[int]:
    """Per photo of a downsized ns-process-data folder, its COLMAP keypoints' depths at their pixels (the nearest
    where two meet; 0 elsewhere) as ``depths/<photo>.npy`` in millimetres, nerfstudio's depth unit, and each frame's
    ``depth_file_path``; returns how many pixels of each photo have a depth."""
    from nerfstudio.data.utils import colmap_parsing_utils as colmap

    model = folder / "colmap" / "sparse" / "0"
    cameras = colmap.read_cameras_binary(model / "cameras.bin")
    images = colmap.read_images_binary(model / "images.bin")
    points = colmap.read_points3D_binary(model / "points3D.bin")
    meta = json.loads((folder / "transforms.json").read_text())
    (folder / "depths").mkdir()
    counts = []
    for frame in meta["frames"]:
        image = images[frame["colmap_im_id"]]
        camera = cameras[image.camera_id]
        width, height = frame.get("w", meta["w"]), frame.get("h", meta["h"])
        depth = np.full((height, width), np.inf)
        rotation = colmap.qvec2rotmat(image.qvec)
        for (x, y), point_id in zip(image.xys, image.point3D_ids, strict=True):
            point = points.get(int(point_id))
            if point is None or point.error > SFM_MAX_ERROR or len(point.image_ids) < SFM_MIN_VIEWS:
                continue
            z = float((rotation @ point.xyz + image.tvec)[2])
            u, v = int(x * width / camera.width), int(y * height / camera.height)
            if z > 0 and 0 <= u < width and 0 <= v < height:
                depth[v, u] = min(depth[v, u], z)
        depth[~np.isfinite(depth)] = 0.0
        name = f"depths/{Path(frame['file_path']).stem}.npy"
        np.save(folder / name, (depth * 1000.0).astype(np.float32))
        frame["depth_file_path"] = name
        counts.append(int((depth > 0).sum()))
    (folder / "transforms.json").write_text(json.dumps(meta, indent=2))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("capture", choices=sorted(CAPTURES))
    parser.add_argument("--output-dir", type=Path, required=True, help="the nerfstudio-data folder to write")
    parser.add_argument("--source", type=Path, help="a checkout or bare git directory of the capture's repository")
    parser.add_argument("--clone-dir", type=Path, default=Path("data/sources"), help="where to clone without --source")
    parser.add_argument("--width", type=int, help="training width in pixels (the capture's default otherwise)")
    parser.add_argument("--sfm-depth", action="store_true", help="also write sparse depth maps from COLMAP's points")
    args = parser.parse_args(argv)
    capture = CAPTURES[args.capture]
    if args.sfm_depth and capture.posed:
        sys.exit(f"--sfm-depth needs a capture COLMAP poses; {args.capture} comes with its own poses and no points.")
    if args.output_dir.exists():
        sys.exit(f"{args.output_dir} exists: remove it or choose another --output-dir.")
    source = Source(args.source or clone(capture.repository, args.clone_dir))
    start = time.perf_counter()
    build = build_posed if capture.posed else build_colmap
    build(source, capture, args.output_dir, args.width or capture.width)
    if args.sfm_depth:
        counts = write_sfm_depth(args.output_dir)
        print(f"SfM depth: {min(counts)}-{max(counts)} pixels per photo (median {int(np.median(counts))})")
    frames = len(json.loads((args.output_dir / "transforms.json").read_text())["frames"])
    print(f"{args.capture}: {frames} posed photos in {args.output_dir} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
