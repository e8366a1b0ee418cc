"""Loading, checking, rendering and blending trained teachers (teacher folders are written here, not trained)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import look_at_camera, make_model
from nerfstudio.configs.base_config import MachineConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.models.nerfacto import NerfactoModelConfig
from nerfstudio.models.splatfacto import SplatfactoModelConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig

from distilled3dgs_ns.student import StudentModelConfig
from distilled3dgs_ns.teacher import TeacherModelConfig
from distilled3dgs_ns.teachers import (
    Teacher,
    TeacherEnsemble,
    TeacherLoadError,
    check_frame,
    check_psnr,
    composite,
    load_teacher,
    to_straight_alpha,
)

IDENTITY = torch.eye(4)[:3]
CAMERAS = [look_at_camera(position, size=24) for position in ((2.0, 0.5, 1.0), (-1.5, 1.5, 1.2), (0.5, -2.0, 0.8))]


def write_teacher(folder: Path, model=None, model_config=None, scale: float = 1.0, step: int = 29) -> Path:
    """A teacher's output folder as ns-train leaves it: config.yml, dataparser_transforms.json, a checkpoint."""
    model_config = model_config or model.config
    config = TrainerConfig(
        method_name="distilled3dgs-teacher",
        machine=MachineConfig(device_type="cpu"),
        pipeline=VanillaPipelineConfig(model=model_config),
    )
    folder.mkdir(parents=True)
    (folder / "config.yml").write_text(yaml.dump(config))
    (folder / "dataparser_transforms.json").write_text(json.dumps({"transform": IDENTITY.tolist(), "scale": scale}))
    if model is not None:
        (folder / "nerfstudio_models").mkdir()
        state = {f"_model.{key}": value for key, value in model.state_dict().items()}
        torch.save({"step": step, "pipeline": state}, folder / "nerfstudio_models" / f"step-{step:09d}.ckpt")
    return folder / "config.yml"


def _teacher_model(variant: str = "standard", seed: int = 0):
    return make_model(TeacherModelConfig(variant=variant, num_downscales=0), num_points=200, seed=seed)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Three teachers of the same scene (variants) and one of another scene, written to disk."""
    root = tmp_path_factory.mktemp("teachers")
    return {
        "standard": write_teacher(root / "standard", _teacher_model("standard", seed=0)),
        "perturbed": write_teacher(root / "perturbed", _teacher_model("perturbed", seed=0)),
        "dropout": write_teacher(root / "dropout", _teacher_model("dropout", seed=0)),
        "other_scene": write_teacher(root / "other", _teacher_model("standard", seed=7)),
    }


def _views(teacher: Teacher) -> list[tuple]:
    """Training views whose ground truth (RGBA) is what ``teacher`` renders: its own scene."""
    return [(camera, to_straight_alpha(teacher.render(camera))) for camera in CAMERAS]


def test_loads_frozen_in_eval_mode_from_any_working_directory(folders, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not where the teacher was written; config.yml says output_dir "outputs"
    teacher = load_teacher(folders["perturbed"], "cpu")
    assert teacher.variant == "perturbed" and teacher.step == 29
    assert teacher.model.num_points == 200  # the checkpoint's Gaussians, not the placeholder points
    assert not teacher.model.training
    assert not any(p.requires_grad for p in teacher.model.parameters())
    original = _teacher_model("perturbed", seed=0)
    assert torch.equal(teacher.model.means, original.means)
    render = teacher.render(CAMERAS[0])
    assert render.shape == (24, 24, 4) and not render.requires_grad
    assert render[..., 3].max() > 0.5


def test_plain_splatfacto_teachers_load_and_render_on_cpu(tmp_path):
    model = _teacher_model()
    splatfacto_config = SplatfactoModelConfig(num_downscales=0)
    teacher = load_teacher(write_teacher(tmp_path / "splatfacto", model, model_config=splatfacto_config), "cpu")
    assert teacher.variant == "standard"
    assert teacher.render(CAMERAS[0])[..., 3].max() > 0.5


def test_a_fixed_training_background_is_baked_in_for_rgb_ground_truth(tmp_path):
    model = make_model(TeacherModelConfig(num_downscales=0, background_color="white"), num_points=200)
    teacher = load_teacher(write_teacher(tmp_path / "white", model), "cpu")
    premultiplied, on_white = teacher.render(CAMERAS[0]), teacher.render(CAMERAS[0], own_background=True)
    assert premultiplied[..., 3].min() < 0.5  # some background is visible
    assert torch.equal(on_white[..., 3], torch.ones(24, 24))
    torch.testing.assert_close(on_white[..., :3], composite(premultiplied, torch.ones(3)))
    # RGB ground truth (white baked in, as Blender data) is compared with the teacher on white
    rgb_views = [(camera, teacher.render(camera, own_background=True)[..., :3]) for camera in CAMERAS]
    assert check_psnr(teacher, rgb_views, min_psnr=30.0) > 60.0
    random_background = load_teacher(write_teacher(tmp_path / "random", _teacher_model()), "cpu")
    assert random_background.background is None
    torch.testing.assert_close(
        random_background.render(CAMERAS[0], own_background=True), random_background.render(CAMERAS[0])
    )


def test_missing_file_names_it_and_the_fix(tmp_path):
    with pytest.raises(TeacherLoadError, match=r"nope[/\\]config\.yml: file not found(.|\n)*fix: pass the config\.yml"):
        load_teacher(tmp_path / "nope" / "config.yml", "cpu")


def test_not_a_gaussian_splatting_model(tmp_path):
    path = write_teacher(tmp_path / "nerfacto", model_config=NerfactoModelConfig())
    with pytest.raises(TeacherLoadError, match="NerfactoModelConfig .* not a Gaussian-splatting(.|\n)*fix: train"):
        load_teacher(path, "cpu")


def test_missing_checkpoint(tmp_path):
    path = write_teacher(tmp_path / "untrained", model_config=TeacherModelConfig())
    with pytest.raises(TeacherLoadError, match=r"no checkpoint \(step-\*\.ckpt\)(.|\n)*--steps-per-save"):
        load_teacher(path, "cpu")


def test_not_a_config_file(tmp_path):
    path = tmp_path / "config.yml"
    path.write_text("just: [a, list")
    with pytest.raises(TeacherLoadError, match="not a readable nerfstudio config"):
        load_teacher(path, "cpu")


def test_different_coordinate_frame(tmp_path):
    teacher = load_teacher(write_teacher(tmp_path / "rescaled", _teacher_model(), scale=0.5), "cpu")
    with pytest.raises(TeacherLoadError, match=r"rescaled[/\\]config\.yml: .*different coordinate frame(.|\n)*fix"):
        check_frame(teacher, IDENTITY, 1.0)
    check_frame(teacher, IDENTITY, 0.5)  # the frame it was trained in passes
    shifted = IDENTITY.clone()
    shifted[0, 3] = 0.2
    with pytest.raises(TeacherLoadError, match="transforms differ by up to 0.2"):
        check_frame(teacher, shifted, 0.5)


def test_missing_dataparser_transforms(folders, tmp_path):
    path = write_teacher(tmp_path / "copied", _teacher_model())
    (path.parent / "dataparser_transforms.json").unlink()
    with pytest.raises(TeacherLoadError, match=r"dataparser_transforms\.json: missing"):
        check_frame(load_teacher(path, "cpu"), IDENTITY, 1.0)


def test_psnr_check_rejects_a_teacher_of_another_scene(folders):
    teacher = load_teacher(folders["standard"], "cpu")
    views = _views(teacher)
    # a random cloud of the same extent still scores ~20 dB on these views, so the bar sits above that here
    assert check_psnr(teacher, views, min_psnr=30.0) > 60.0  # its own scene: essentially exact
    stranger = load_teacher(folders["other_scene"], "cpu")
    with pytest.raises(TeacherLoadError, match=r"other[/\\]config\.yml: renders 3 of .* dB PSNR(.|\n)*fix: pass"):
        check_psnr(stranger, views, min_psnr=30.0)


def test_blend_is_the_weighted_mean_of_the_teachers_renders(folders):
    teachers = [load_teacher(folders[name], "cpu") for name in ("standard", "other_scene")]
    camera, background = CAMERAS[1], torch.tensor([0.2, 0.7, 0.4])
    renders = [t.render(camera) for t in teachers]
    on_background = [composite(r, background) for r in renders]

    mean = TeacherEnsemble(teachers)
    assert mean.weights == [0.5, 0.5]
    torch.testing.assert_close(composite(mean.render_blend(camera), background), sum(on_background) / 2)

    weighted = TeacherEnsemble(teachers, weights=[1.0, 3.0])
    assert weighted.weights == [0.25, 0.75]
    expected = 0.25 * on_background[0] + 0.75 * on_background[1]
    torch.testing.assert_close(composite(weighted.render_blend(camera), background), expected)
    # straight alpha, the ground truth's form, composites back to the same image
    straight = to_straight_alpha(weighted.render_blend(camera))
    rgb, alpha = straight[..., :3], straight[..., 3:]
    torch.testing.assert_close(alpha * rgb + (1 - alpha) * background, expected, atol=1e-5, rtol=0)


def test_bad_weights_and_standard_index(folders):
    teachers = [load_teacher(folders["standard"], "cpu")]
    with pytest.raises(ValueError, match="2 teacher weights given for 1"):
        TeacherEnsemble(teachers, weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="non-negative"):
        TeacherEnsemble(teachers, weights=[-1.0])
    with pytest.raises(ValueError, match="out of range"):
        TeacherEnsemble(teachers, standard=3)


def test_standard_teacher_comes_from_the_variant_or_the_index(folders):
    teachers = [load_teacher(folders[name], "cpu") for name in ("dropout", "standard", "perturbed")]
    assert TeacherEnsemble(teachers).standard is teachers[1]
    assert TeacherEnsemble(teachers, standard=2).standard is teachers[2]
    assert TeacherEnsemble(teachers).names == ["teacher_0_dropout", "teacher_1_standard", "teacher_2_perturbed"]
    with pytest.raises(ValueError, match="--pipeline.standard-teacher"):
        _ = TeacherEnsemble([teachers[0], teachers[2]]).standard


def test_teachers_stay_out_of_the_students_module_tree(folders):
    student = make_model(StudentModelConfig(num_downscales=0))
    keys = set(student.state_dict())
    ensemble = TeacherEnsemble.load([folders[name] for name in ("standard", "perturbed", "dropout")], "cpu")
    student.attach_teachers(ensemble)
    assert set(student.state_dict()) == keys
    assert all(not name.startswith("teachers") for name, _ in student.named_modules())
    student.train()  # the trainer does this every step; teachers must stay in eval mode
    assert not any(t.model.training for t in ensemble.teachers)
