"""Tests of the embedded default scene: format, content, geometry, camera conventions and the write protocol."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import tyro
from PIL import Image

from distilled3dgs_ns import scenes
from distilled3dgs_ns.scenes import (
    EmbeddedSceneConfig,
    cast_rays,
    render_view,
    write_embedded_scene,
)

SMALL = EmbeddedSceneConfig(image_size=24, n_train=3, n_val=1, n_test=2, supersample=2)
COUNTS = {"train": 48, "val": 6, "test": 8}


@pytest.fixture(scope="module")
def default_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_embedded_scene(tmp_path_factory.mktemp("default") / "embedded")


def _primitive_index(name: str) -> int:
    return [primitive.name for primitive in scenes.PRIMITIVES].index(name)


def _load_rgba(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "RGBA"
        return np.asarray(image).astype(np.float64) / 255.0


def _over_white(rgba: np.ndarray) -> np.ndarray:
    return rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])


def _file_states(directory: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.read_bytes()) for p in directory.rglob("*.*")}


def test_loads_through_blender_dataparser(default_scene: Path) -> None:
    from nerfstudio.cameras.cameras import Cameras
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig

    parser = BlenderDataParserConfig(data=default_scene).setup()
    for split, count in COUNTS.items():
        outputs = parser.get_dataparser_outputs(split)
        assert len(outputs.image_filenames) == count
        assert all(Path(name).is_file() for name in outputs.image_filenames)
        assert outputs.cameras.width.unique().tolist() == [100]
        assert outputs.cameras.height.unique().tolist() == [100]
        assert outputs.alpha_color.tolist() == [1.0, 1.0, 1.0]
        assert np.allclose(outputs.cameras.camera_to_worlds[:, :, 3].norm(dim=-1).numpy(), 4.0, atol=1e-5)

    # nerfstudio's own rays through the written cameras reproduce the images (this catches any disagreement on axes,
    # field of view or principal point: shifting it by half a pixel fits worse), and all they hit is in the scene box.
    outputs = parser.get_dataparser_outputs("test")
    aabb = outputs.scene_box.aabb.numpy()
    errors = {}
    for shift in [(0.0, 0.0), (0.5, 0.0), (-0.5, 0.0), (0.0, 0.5), (0.0, -0.5)]:
        cameras = Cameras(
            camera_to_worlds=outputs.cameras.camera_to_worlds,
            fx=outputs.cameras.fx,
            fy=outputs.cameras.fy,
            cx=outputs.cameras.cx + shift[0],
            cy=outputs.cameras.cy + shift[1],
            width=outputs.cameras.width,
            height=outputs.cameras.height,
        )
        per_view = []
        for i, filename in enumerate(outputs.image_filenames):
            bundle = cameras.generate_rays(camera_indices=i, keep_shape=True)
            origins = bundle.origins.reshape(-1, 3).numpy().astype(np.float64)
            dirs = bundle.directions.reshape(-1, 3).numpy().astype(np.float64)
            t, index, rgb = cast_rays(origins, dirs)
            hits = origins[index >= 0] + t[index >= 0, None] * dirs[index >= 0]
            assert ((hits >= aabb[0]) & (hits <= aabb[1])).all()
            rgb[index < 0] = 1.0
            per_view.append(np.abs(_over_white(_load_rgba(filename)).reshape(-1, 3) - rgb).max(axis=1).mean())
        errors[shift] = float(np.mean(per_view))
    best = errors.pop((0.0, 0.0))
    assert best < 0.03, best  # not 0: one centre ray per pixel against a supersampled image differs at edges
    assert best < min(errors.values()), (best, errors)


def test_images_have_coverage_and_texture(default_scene: Path) -> None:
    for split, count in COUNTS.items():
        for i in range(count):
            rgba = _load_rgba(default_scene / split / f"r_{i}.png")
            assert rgba.shape == (100, 100, 4)
            assert 0.1 < rgba[..., 3].mean() < 0.9
            assert rgba[[0, -1], :, 3].max() == 0 and rgba[:, [0, -1], 3].max() == 0  # the scene stays in frame
            image = _over_white(rgba)
            gradient = np.maximum(
                np.abs(np.diff(image, axis=0))[:, :-1].max(axis=-1), np.abs(np.diff(image, axis=1))[:-1].max(axis=-1)
            )
            solid = rgba[..., 3] == 1.0
            interior = solid[:-1, :-1] & solid[1:, :-1] & solid[:-1, 1:]
            assert (gradient[interior] > 0.1).mean() > 0.15, f"{split}/r_{i} lacks texture inside the silhouettes"


def test_ray_cast_from_above_hits_sphere_top() -> None:
    sphere_index = _primitive_index("checker_sphere")
    sphere = scenes.PRIMITIVES[sphere_index]
    top = sphere.center[2] + sphere.radius
    eye = np.array([0.0, 0.0, 4.0])
    ground_point = np.array([0.8, 0.6, scenes.GROUND_HEIGHT])
    t, index, _ = cast_rays(np.stack([eye, eye]), np.stack([[0.0, 0.0, -1.0], ground_point - eye]))
    assert index.tolist() == [sphere_index, _primitive_index("ground")]
    assert t == pytest.approx([4.0 - top, np.linalg.norm(ground_point - eye)], abs=1e-9)

    c2w = np.eye(4)
    c2w[2, 3] = 4.0  # on the +Z axis looking straight down (-Z), +Y up in the image
    rgba, _ = render_view(c2w, 9, 9, focal=6.0)
    assert rgba[4, 4, 3] == 1.0 and rgba[0, 0, 3] == 0.0  # centre ray hits, corner ray misses everything
    brightness = scenes.AMBIENT + scenes.DIFFUSE * scenes.LIGHT_DIR[2]  # normal +Z, nothing above to cast a shadow
    candidates = [np.asarray(sphere.color_a) * brightness, np.asarray(sphere.color_b) * brightness]
    assert min(np.abs(rgba[4, 4, :3] - color).max() for color in candidates) < 1e-9


def _project(points: np.ndarray, c2w: np.ndarray, camera_angle_x: float, size: int) -> np.ndarray:
    """Textbook Blender/OpenGL pinhole projection to (row, col) in pixels; camera looks down -Z, +Y up."""
    cam = (points - c2w[:3, 3]) @ c2w[:3, :3]
    depth = -cam[:, 2]
    assert (depth > 0).all()
    focal = 0.5 * size / math.tan(0.5 * camera_angle_x)
    return np.stack([0.5 * size - focal * cam[:, 1] / depth, 0.5 * size + focal * cam[:, 0] / depth], axis=1)


def _flat_surface_points(eye: np.ndarray, rng: np.random.Generator, pixel_angle: float) -> tuple[np.ndarray, ...]:
    """Visible surface points seen from ``eye`` whose shaded colour is constant within 1.5 pixels around them."""
    targets = rng.uniform([-1.2, -1.2, scenes.GROUND_HEIGHT], [1.2, 1.2, 0.5], (2000, 3))
    dirs = (targets - eye) / np.linalg.norm(targets - eye, axis=1, keepdims=True)
    t, index, rgb = cast_rays(eye, dirs)
    helper = np.where(np.abs(dirs[:, 2:]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]])
    u = np.cross(dirs, helper)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = np.cross(dirs, u)
    flat = index >= 0
    for angle in np.arange(8) * math.pi / 4:
        nearby = dirs + 1.5 * pixel_angle * (math.cos(angle) * u + math.sin(angle) * v)
        _, near_index, near_rgb = cast_rays(eye, nearby)
        flat &= (near_index == index) & (np.abs(near_rgb - rgb).max(axis=1) < 0.03)
    return eye + t[flat, None] * dirs[flat], rgb[flat]


def _match_rate(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, expected: np.ndarray) -> float:
    """Share of pixels that are fully covered and have the expected colour (up to shading across a pixel)."""
    error = np.abs(image[rows, cols, :3] - expected).max(axis=1)
    return float(np.mean((error < 0.04) & (image[rows, cols, 3] == 1.0)))


def test_known_surface_points_project_onto_matching_pixels(default_scene: Path) -> None:
    transforms = json.loads((default_scene / "transforms_test.json").read_text())
    size = 100
    rng = np.random.default_rng(0)
    pixel_angle = math.tan(0.5 * transforms["camera_angle_x"]) / (0.5 * size)
    mirrored: list[float] = []
    for frame in transforms["frames"]:
        c2w = np.asarray(frame["transform_matrix"])
        image = _load_rgba(default_scene / f"{frame['file_path']}.png")
        points, expected = _flat_surface_points(c2w[:3, 3], rng, pixel_angle)
        assert len(points) >= 20
        rows, cols = np.floor(_project(points, c2w, transforms["camera_angle_x"], size)).astype(int).T
        assert ((rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)).all()
        assert _match_rate(image, rows, cols, expected) == 1.0
        # Controls: the same check with an axis mirrored (a wrong convention) fails, so the check does discriminate.
        mirrored.append(_match_rate(image, size - 1 - rows, cols, expected))
        mirrored.append(_match_rate(image, rows, size - 1 - cols, expected))
    assert max(np.mean(mirrored[0::2]), np.mean(mirrored[1::2])) < 0.5, mirrored


def test_written_format_matches_blender_layout(tmp_path: Path) -> None:
    out = write_embedded_scene(tmp_path / "scene", SMALL)
    for split, count in {"train": SMALL.n_train, "val": SMALL.n_val, "test": SMALL.n_test}.items():
        transforms = json.loads((out / f"transforms_{split}.json").read_text())
        assert transforms["camera_angle_x"] == SMALL.camera_angle_x
        assert [frame["file_path"] for frame in transforms["frames"]] == [f"./{split}/r_{i}" for i in range(count)]
        for frame in transforms["frames"]:
            c2w = np.asarray(frame["transform_matrix"])
            assert c2w.shape == (4, 4) and np.allclose(c2w[3], [0, 0, 0, 1])
            assert np.allclose(c2w[:3, :3] @ c2w[:3, :3].T, np.eye(3)) and np.linalg.det(c2w[:3, :3]) > 0
            forward = -c2w[:3, 2]  # Blender cameras look down their -Z axis, towards the scene
            to_target = np.asarray(scenes.LOOK_AT_TARGET) - c2w[:3, 3]
            assert np.allclose(forward, to_target / np.linalg.norm(to_target))
            assert c2w[2, 3] > 0 and c2w[2, 1] > 0  # above the ground, image up tilted towards world up
            assert _load_rgba(out / f"{frame['file_path']}.png").shape == (24, 24, 4)
    assert not list(tmp_path.glob(".scene.*"))  # no staging folder left behind


def test_idempotent_and_rewrites_on_change(tmp_path: Path) -> None:
    out = tmp_path / "scene"
    write_embedded_scene(out, SMALL)
    before = _file_states(out)
    assert write_embedded_scene(out, SMALL) == out
    assert _file_states(out) == before  # nothing rewritten: same mtimes and bytes

    reseeded = dataclasses.replace(SMALL, seed=1)
    write_embedded_scene(out, reseeded)
    after = _file_states(out)
    assert after.keys() == before.keys()
    assert after["train/r_0.png"][1] != before["train/r_0.png"][1]
    assert json.loads((out / scenes.META_FILENAME).read_text())["config"]["seed"] == 1

    (out / "val" / "r_0.png").unlink()  # an incomplete scene is rewritten
    write_embedded_scene(out, reseeded)
    assert _file_states(out)["val/r_0.png"][1] == after["val/r_0.png"][1]


def test_crash_leaves_previous_scene_and_no_partial_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = write_embedded_scene(tmp_path / "scene", SMALL)
    before = _file_states(out)
    calls = []

    def failing_render(*args: object, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        calls.append(None)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return render_view(*args, **kwargs)

    monkeypatch.setattr(scenes, "render_view", failing_render)
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_embedded_scene(out, dataclasses.replace(SMALL, seed=2))
    assert _file_states(out) == before and scenes.scene_is_complete(out, SMALL)
    with pytest.raises(RuntimeError, match="simulated crash"):
        calls.clear()
        write_embedded_scene(tmp_path / "fresh", SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"]


def test_refuses_to_replace_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        write_embedded_scene(tmp_path / "mine", SMALL)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_deterministic(tmp_path: Path) -> None:
    first = _file_states(write_embedded_scene(tmp_path / "a", SMALL))
    second = _file_states(write_embedded_scene(tmp_path / "b", SMALL))
    assert {k: v[1] for k, v in first.items()} == {k: v[1] for k, v in second.items()}


def test_cli_writes_then_skips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--output-dir", str(tmp_path / "cli"), "--image-size", "16", "--n-train", "2", "--n-val", "1"]
    tyro.cli(scenes.main, args=[*args, "--n-test", "1"])
    assert "written" in capsys.readouterr().out
    assert json.loads((tmp_path / "cli" / scenes.META_FILENAME).read_text())["config"]["image_size"] == 16
    tyro.cli(scenes.main, args=[*args, "--n-test", "1"])
    assert "already up to date" in capsys.readouterr().out
