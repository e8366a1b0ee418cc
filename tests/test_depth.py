"""Depth supervision: the embedded scene's exact maps, reading and fitting maps, the loss and the metric."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from distilled3dgs_ns.depth import (
    DEPTH_KEY,
    DepthDatamanagerConfig,
    DepthMapError,
    DepthSettings,
    depth_abs_rel,
    depth_targets,
    downscale_depth,
    exponential_weight,
    fit_affine,
    inverse_depth_l1,
    project_points,
    read_depth_file,
)
from distilled3dgs_ns.scenes import EmbeddedSceneConfig, make_depth_relative, write_embedded_scene

SIZE = 40


@pytest.fixture(scope="module")
def depth_scene(tmp_path_factory) -> Path:
    config = EmbeddedSceneConfig(image_size=SIZE, n_train=6, n_val=1, n_test=2, supersample=1, depth_maps=True)
    return write_embedded_scene(tmp_path_factory.mktemp("scene") / "embedded", config)


def _outputs(scene: Path, split: str = "train"):
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    return NerfstudioDataParserConfig(data=scene, load_3D_points=True).setup().get_dataparser_outputs(split)


def _copy_scene(scene: Path, folder: Path) -> Path:
    import shutil

    return Path(shutil.copytree(scene, folder))


def test_embedded_depth_maps_agree_with_the_sparse_points_through_nerfstudio_data(depth_scene):
    # The scene's depth maps, its sparse points and its cameras, read by nerfstudio-data (orientation, centring and
    # scale applied to poses and points, our metric reading applying depth_unit_scale_factor * dataparser_scale):
    # the visible points must sit at the map's depth. Points came from all training views, so many are hidden in
    # any one view (behind the mapped surface); few lie in front of it (at silhouettes, where a 40 px map's pixel
    # centre sees the ground behind the point).
    outputs = _outputs(depth_scene)
    targets = depth_targets(outputs, DepthSettings(maps="metric"))
    points = outputs.metadata["points3D_xyz"].float()
    for index, target in enumerate(targets):
        rows, cols, z = project_points(points, outputs.cameras[index])
        surface = target[rows, cols, 0]
        covered = surface > 0
        error = (z[covered] - surface[covered]) / surface[covered]
        assert covered.sum() > 100
        assert abs(float(error.median())) < 0.02, f"view {index}: maps and points disagree"
        assert (error.abs() < 0.05).float().mean() > 0.5, f"view {index}: maps and points disagree"
        assert (error < -0.05).float().mean() < 0.1, f"view {index}: points in front of the mapped surface"


def test_relative_maps_are_fitted_back_to_metric_depth(depth_scene, tmp_path):
    scene = _copy_scene(depth_scene, tmp_path / "degraded")
    make_depth_relative(scene)
    exact = depth_targets(_outputs(depth_scene), DepthSettings(maps="metric"))
    fitted = depth_targets(_outputs(scene), DepthSettings(maps="relative"))
    for truth, target in zip(exact, fitted, strict=True):
        assert target is not None
        valid = truth > 0
        assert torch.equal(valid, target > 0)
        assert ((target[valid] - truth[valid]).abs() / truth[valid]).median() < 0.01


def test_a_map_that_fits_no_points_is_left_out_with_a_warning(depth_scene, tmp_path, monkeypatch):
    import distilled3dgs_ns.depth as depth

    scene = _copy_scene(depth_scene, tmp_path / "noisy")
    make_depth_relative(scene)
    transforms = json.loads((scene / "transforms.json").read_text())
    bad = transforms["frames"][2]["depth_file_path"]
    np.save(scene / bad, np.random.default_rng(1).uniform(-1, 1, (SIZE, SIZE)).astype(np.float32))
    said: list[str] = []
    monkeypatch.setattr(depth.CONSOLE, "log", lambda message, **_: said.append(str(message)))
    fitted = depth_targets(_outputs(scene), DepthSettings(maps="relative"))
    assert fitted[2] is None and all(target is not None for i, target in enumerate(fitted) if i != 2)
    warnings = [line for line in said if "depth map" in line]
    assert len(warnings) == 1 and bad in warnings[0] and "left out" in warnings[0]


@pytest.mark.parametrize("fault", ["missing", "unreadable", "mis-sized"])
def test_a_bad_depth_file_is_one_line_naming_it(depth_scene, tmp_path, fault):
    scene = _copy_scene(depth_scene, tmp_path / fault)
    transforms = json.loads((scene / "transforms.json").read_text())
    name = transforms["frames"][1]["depth_file_path"]
    if fault == "missing":
        (scene / name).unlink()
    elif fault == "unreadable":
        (scene / name).write_bytes(b"\x89PNG broken")
    else:
        np.save(scene / name.replace(".png", ".npy"), np.ones((SIZE // 2, SIZE), dtype=np.float32))
        transforms["frames"][1]["depth_file_path"] = name.replace(".png", ".npy")
        (scene / "transforms.json").write_text(json.dumps(transforms))
    with pytest.raises(DepthMapError) as error:
        depth_targets(_outputs(scene), DepthSettings(maps="metric"))
    message = str(error.value)
    assert "\n" not in message and Path(name).stem in message and fault.split("-")[0] in message


def test_depth_asked_for_where_the_data_has_none_is_refused(depth_scene, tmp_path):
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig

    outputs = BlenderDataParserConfig(data=depth_scene).setup().get_dataparser_outputs("train")
    with pytest.raises(DepthMapError, match="depth_file_path"):
        depth_targets(outputs, DepthSettings(maps="metric"))


def test_read_depth_file_reads_16_bit_png_and_npy(tmp_path):
    from PIL import Image

    values = np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000
    Image.fromarray(values).save(tmp_path / "d.png")
    np.save(tmp_path / "d.npy", values.astype(np.float32) / 7)
    assert np.array_equal(read_depth_file(tmp_path / "d.png", 4, 3), values)
    assert np.allclose(read_depth_file(tmp_path / "d.npy", 4, 3), values / 7)


def test_the_datamanager_hands_depth_targets_to_the_batch(depth_scene):
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    config = DepthDatamanagerConfig(
        dataparser=NerfstudioDataParserConfig(data=depth_scene, load_3D_points=True), depth_maps="metric"
    )
    datamanager = config.setup(device="cpu")
    assert datamanager.has_depth
    _, batch = datamanager.next_train(0)
    assert batch[DEPTH_KEY].shape == (SIZE, SIZE, 1) and (batch[DEPTH_KEY] > 0).any()
    _, test_batch = datamanager.next_eval_image(0)
    assert DEPTH_KEY in test_batch
    off = DepthDatamanagerConfig(dataparser=NerfstudioDataParserConfig(data=depth_scene)).setup(device="cpu")
    assert not off.has_depth and DEPTH_KEY not in off.next_train(0)[1]


def test_fit_affine_ignores_hidden_points():
    x = torch.linspace(0.2, 1.0, 200)
    y = 2.0 * x + 0.3
    y[::10] -= 0.5  # a tenth of the points lie behind the surface: smaller inverse depth
    scale, offset = fit_affine(x, y)
    assert scale == pytest.approx(2.0, abs=1e-4) and offset == pytest.approx(0.3, abs=1e-4)


def test_the_depth_weight_decays_exponentially():
    assert exponential_weight(1.0, 0.01, 0.0) == pytest.approx(1.0)
    assert exponential_weight(1.0, 0.01, 0.5) == pytest.approx(0.1)
    assert exponential_weight(1.0, 0.01, 1.0) == pytest.approx(0.01)
    assert exponential_weight(0.0, 0.01, 0.3) == 0.0


def test_inverse_depth_l1_and_abs_rel_count_only_pixels_with_a_target():
    rendered = torch.full((2, 2, 1), 2.0, requires_grad=True)
    target = torch.tensor([[[4.0], [0.0]], [[2.0], [0.0]]])
    loss = inverse_depth_l1(rendered, target)
    assert float(loss) == pytest.approx((abs(0.5 - 0.25) + 0.0) / 2)
    loss.backward()
    assert rendered.grad[0, 1] == 0 and rendered.grad[0, 0] != 0
    assert depth_abs_rel(rendered.detach(), target) == pytest.approx((0.5 + 0.0) / 2)
    assert depth_abs_rel(rendered.detach(), torch.zeros_like(target)) is None
    assert float(inverse_depth_l1(rendered, torch.zeros_like(target))) == 0.0


def test_downscale_depth_keeps_the_render_size_and_no_blend():
    depth = torch.arange(1.0, 1 + 7 * 9).reshape(7, 9, 1)
    half = downscale_depth(depth, 2)
    assert half.shape == (3, 4, 1)
    assert set(half.flatten().tolist()) <= set(depth.flatten().tolist())


def test_the_depth_loss_pulls_the_rendered_depth_to_the_target():
    from helpers import look_at_camera, make_model

    from distilled3dgs_ns.teacher import TeacherModelConfig

    model = make_model(TeacherModelConfig(depth_weight=1.0, num_downscales=0, background_color="white"), 200)
    camera = look_at_camera((0.0, -2.5, 1.0), size=24)
    rendered = model.eval().get_outputs_for_camera(camera)["depth"]
    model.train()
    optimizer = torch.optim.Adam([model.gauss_params["means"]], lr=5e-3)
    model.optimizers = {"means": optimizer}  # what step_cb hands a training model
    target = torch.where(rendered < rendered.max(), rendered * 0.9, torch.zeros_like(rendered))
    batch = {"image": torch.ones(24, 24, 3), DEPTH_KEY: target}
    losses = []
    for _ in range(30):
        outputs = model.get_outputs(camera)
        loss = model.get_loss_dict(outputs, batch)["depth_loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
    assert "depth_loss" not in model.get_loss_dict(model.get_outputs(camera), {"image": batch["image"]})


def test_the_depth_loss_refuses_to_start_without_depth_maps():
    from helpers import make_model

    from distilled3dgs_ns.teacher import TeacherModelConfig

    model = make_model(TeacherModelConfig(depth_weight=1.0))

    class NoDepth:
        has_depth = False

    with pytest.raises(DepthMapError, match="--pipeline.datamanager.depth-maps"):
        model.check_depth_targets(NoDepth())


def test_eval_metrics_report_the_depth_error():
    from helpers import look_at_camera, make_model

    from distilled3dgs_ns.teacher import TeacherModelConfig

    model = make_model(TeacherModelConfig(background_color="white"), 200)
    model.eval()
    camera = look_at_camera((0.0, -2.5, 1.0), size=24)
    outputs = model.get_outputs_for_camera(camera)
    target = torch.where(outputs["depth"] < outputs["depth"].max(), outputs["depth"], torch.zeros(1))
    metrics, _ = model.get_image_metrics_and_images(outputs, {"image": torch.ones(24, 24, 3), DEPTH_KEY: target})
    assert metrics["depth_abs_rel"] == pytest.approx(0.0, abs=1e-6)
    metrics, _ = model.get_image_metrics_and_images(outputs, {"image": torch.ones(24, 24, 3), DEPTH_KEY: target * 1.25})
    assert metrics["depth_abs_rel"] == pytest.approx(0.2, rel=1e-4)
    assert not math.isnan(metrics["psnr"])


# --------------------------------------------------------------------------------------------- the commands


def test_run_depth_switches_on_the_teachers_depth_loss_where_the_data_has_maps(depth_scene, tmp_path):
    from distilled3dgs_ns.run import Run, RunConfig, check_options
    from distilled3dgs_ns.stages import RunSetupError

    def teacher_options(**options) -> list[str]:
        config = RunConfig(data=depth_scene, dataparser="nerfstudio-data", output_dir=tmp_path / "out", **options)
        run = Run(config, log=lambda _: None)
        run.check_data(depth_scene)
        training = run.recipes.teacher_trainings()[0]
        check_options(training, config, depth_scene, run.runs)  # ns-train accepts what the run generates
        return training.options

    auto = teacher_options(depth="auto")
    assert auto[auto.index("--pipeline.datamanager.depth-maps") + 1] == "relative"
    assert auto[auto.index("--pipeline.model.depth-weight") + 1] == "1.0"
    metric = teacher_options(depth="metric", depth_weight=0.5)
    assert metric[metric.index("--pipeline.datamanager.depth-maps") + 1] == "metric"
    assert metric[metric.index("--pipeline.model.depth-weight") + 1] == "0.5"
    assert "--pipeline.datamanager.depth-maps" not in teacher_options()
    blender = Run(RunConfig(data=depth_scene, output_dir=tmp_path / "b", depth="auto"), log=lambda _: None)
    blender.check_data(depth_scene)  # blender-data reads no depth maps: auto is off, not an error
    assert "--pipeline.datamanager.depth-maps" not in blender.recipes.teacher_trainings()[0].options
    asked = Run(RunConfig(data=depth_scene, output_dir=tmp_path / "c", depth="relative"), log=lambda _: None)
    with pytest.raises(RunSetupError, match="--depth relative: the 'blender-data' dataparser found no depth maps"):
        asked.check_data(depth_scene)


def test_the_paper_presets_ask_for_depth_where_it_exists():
    from distilled3dgs_ns.presets import load_preset
    from distilled3dgs_ns.run import RunConfig

    for name in ("paper-mipnerf360", "paper-tanks-temples"):
        preset = load_preset(name, RunConfig(preset=name))
        assert preset.depth == "auto" and preset.depth_weight_final == 0.01  # the official schedule at 30k steps


@pytest.mark.slow
def test_ns_train_stops_on_a_missing_depth_map_in_one_line_before_training(depth_scene, tmp_path):
    import subprocess

    scene = _copy_scene(depth_scene, tmp_path / "missing")
    name = json.loads((scene / "transforms.json").read_text())["frames"][3]["depth_file_path"]
    (scene / name).unlink()
    result = subprocess.run(
        ["ns-train", "distilled3dgs-teacher", "--data", str(scene), "--output-dir", str(tmp_path / "runs"),
         "--max-num-iterations", "5", "--vis", "tensorboard", "--machine.device-type", "cpu",
         "--pipeline.datamanager.depth-maps", "relative", "--pipeline.model.depth-weight", "1", "nerfstudio-data"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode != 0
    assert f"ns-train: depth map {scene / name} is missing" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


@pytest.mark.slow
def test_the_depth_benchmark_prints_its_line(tmp_path):
    import re
    import sys

    from helpers import REPO_ROOT, run_cli

    result = run_cli(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "depth_teacher.py"), "--output-dir", str(tmp_path / "bench"),
         "--steps", "30", "--student-steps", "30", "--image-size", "32"],
        cwd=tmp_path,
    )  # fmt: skip
    line = re.search(
        r"^depth error: with ([\d.]+), without ([\d.]+) \((-?\d+)% lower\); PSNR with ([\d.]+), without ([\d.]+)$",
        result.stdout,
        re.MULTILINE,
    )
    assert line, result.stdout
    rows = json.loads((tmp_path / "bench" / "depth_teacher.json").read_text())
    assert set(rows) == {
        "teacher-with-depth", "teacher-without-depth",
        "student-of-teacher-with-depth", "student-of-teacher-without-depth",
    }  # fmt: skip
    assert float(line.group(1)) == pytest.approx(rows["teacher-with-depth"]["depth_abs_rel"], abs=1e-4)
    assert all(0 < row["depth_abs_rel"] < 1 for row in rows.values())
