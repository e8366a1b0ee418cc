"""Bad input and broken runs end in one clear message, never in lost work (issue 11's fault matrix, fast cases).

The slow end-to-end cases (a diverging ns-train, a copied run folder, teacher errors inside ns-train) live in
test_e2e_teacher.py; the interrupted-training cases of distilled3dgs-run in test_run.py.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import make_model
from test_teachers import write_teacher

from distilled3dgs_ns import errors
from distilled3dgs_ns.checkpoints import CheckpointError, DivergedError, check_finite, load_pipeline
from distilled3dgs_ns.compression import cli as export_cli
from distilled3dgs_ns.compression.compact_format import CompactFormatError
from distilled3dgs_ns.durable import write_atomic
from distilled3dgs_ns.evaluation import entrypoint as eval_entrypoint
from distilled3dgs_ns.presets import PresetError
from distilled3dgs_ns.run import Run, RunConfig, parse_config
from distilled3dgs_ns.stages import RunSetupError
from distilled3dgs_ns.student import StudentModelConfig
from distilled3dgs_ns.teacher import TeacherModelConfig
from distilled3dgs_ns.teachers import TeacherEnsemble, TeacherLoadError, load_teacher
from distilled3dgs_ns.trainer import STAGING_SUFFIX, PluginTrainer, PluginTrainerConfig


def _teacher(tmp_path: Path, name: str = "teacher", poison: bool = False) -> Path:
    model = make_model(TeacherModelConfig(num_downscales=0), num_points=50)
    if poison:
        with torch.no_grad():
            model.gauss_params["means"][:7] = float("nan")
    return write_teacher(tmp_path / name, model)


# ------------------------------------------------------------------------------------------------ divergence


def test_non_finite_gaussians_are_named_with_their_count():
    params = {"means": torch.zeros(10, 3), "scales": torch.zeros(10, 3)}
    check_finite(params, "step 3")
    params["scales"][[2, 5], 1] = float("inf")
    with pytest.raises(DivergedError, match=r"step 3: training diverged, non-finite Gaussians \(2 of 10 scales\)"):
        check_finite(params, "step 3")


def test_finite_gaussians_whose_sum_overflows_are_not_divergence():
    """The every-step check reads a sum first; finite entries whose sum is infinite still pass."""
    params = {"scales": torch.full((4, 3), 3e38)}
    assert not torch.isfinite(params["scales"].sum())
    check_finite(params, "step 3")
    params["scales"][1, 2] = float("nan")
    with pytest.raises(DivergedError, match=r"1 of 4 scales"):
        check_finite(params, "step 3")


def test_a_diverged_checkpoint_does_not_load(tmp_path):
    """ns-eval, ns-export and ns-viewer load through the model: a NaN checkpoint is refused, not rendered."""
    model = make_model(TeacherModelConfig(num_downscales=0), num_points=20)
    state = model.state_dict()
    state["gauss_params.opacities"][3] = float("nan")
    with pytest.raises(DivergedError, match="1 of 20 opacities"):
        model.load_state_dict(state)


def test_a_diverged_teacher_is_refused_naming_its_checkpoint(tmp_path):
    with pytest.raises(DivergedError, match=r"teacher .*step-000000029\.ckpt: training diverged.*7 of 50 means"):
        load_teacher(_teacher(tmp_path, poison=True), "cpu")


# ------------------------------------------------------------------------------------------------ files


def test_a_truncated_checkpoint_names_the_file(tmp_path):
    config = _teacher(tmp_path)
    checkpoint = next((config.parent / "nerfstudio_models").glob("*.ckpt"))
    checkpoint.write_bytes(checkpoint.read_bytes()[:500])
    with pytest.raises(CheckpointError, match=rf"{checkpoint.name} is not a readable checkpoint .*truncated"):
        load_pipeline(config)
    with pytest.raises(CheckpointError, match="is a folder; pass the config.yml"):
        load_pipeline(config.parent)


def _trainer(models: Path) -> PluginTrainer:
    """A trainer with just what ``save_checkpoint`` reads: a tiny pipeline, no optimisers."""
    trainer = PluginTrainer.__new__(PluginTrainer)
    trainer.config = PluginTrainerConfig()
    trainer.checkpoint_dir = models
    trainer.pipeline = torch.nn.Linear(2, 2)
    trainer.optimizers = SimpleNamespace(optimizers={}, schedulers={})
    trainer.grad_scaler = torch.amp.GradScaler("cpu", enabled=False)
    return trainer


def test_a_run_killed_while_saving_keeps_its_last_whole_checkpoint(tmp_path, monkeypatch):
    """The CI saw a student killed during nerfstudio's in-place write fail to resume (EOFError in torch.load)."""
    models = tmp_path / "run" / "nerfstudio_models"
    trainer = _trainer(models)
    trainer.save_checkpoint(9)
    real_save = torch.save

    def killed_midway(state: object, path: Path) -> None:
        Path(path).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint(19)
    assert [path.name for path in models.iterdir()] == ["step-000000009.ckpt"]
    assert torch.load(models / "step-000000009.ckpt", weights_only=False)["step"] == 9
    monkeypatch.setattr(torch, "save", real_save)
    trainer.save_checkpoint(29)  # the next save clears the staged half file and the older checkpoint
    assert sorted(path.name for path in models.parent.iterdir()) == ["nerfstudio_models"]
    assert [path.name for path in models.iterdir()] == ["step-000000029.ckpt"]
    monkeypatch.setattr(torch, "save", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint(39)
    monkeypatch.setattr(torch, "save", real_save)
    trainer.config.save_only_latest_checkpoint = False  # nerfstudio then clears nothing; the half file goes anyway
    trainer.save_checkpoint(49)
    assert sorted(path.name for path in models.parent.iterdir()) == ["nerfstudio_models"]
    assert sorted(path.name for path in models.iterdir()) == ["step-000000029.ckpt", "step-000000049.ckpt"]


@pytest.fixture
def disk_events(monkeypatch) -> list[tuple[str, str]]:
    """Every fsync (of which path), rename (to which path) and deletion, in order."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the synced files")
    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_unlink = os.fsync, os.replace, Path.unlink

    def fsync(descriptor: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        real_fsync(descriptor)

    def replace(source, target) -> None:
        events.append(("replace", str(Path(target).resolve())))
        real_replace(source, target)

    def unlink(path: Path, missing_ok: bool = False) -> None:
        events.append(("unlink", str(path.resolve())))
        real_unlink(path, missing_ok)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(Path, "unlink", unlink)
    return events


def test_a_checkpoint_is_on_the_disk_before_it_replaces_the_last_one(tmp_path, disk_events):
    """After a power cut the file system may keep a rename and lose the data written before it; nerfstudio keeps only
    the latest checkpoint, so the older one must outlive the new one's rename and the rename must be on the disk."""
    models = (tmp_path / "run" / "nerfstudio_models").resolve()
    trainer = _trainer(models)
    trainer.save_checkpoint(9)
    disk_events.clear()
    trainer.save_checkpoint(19)
    new, old = models / "step-000000019.ckpt", models / "step-000000009.ckpt"
    staged = models.with_name(models.name + STAGING_SUFFIX) / new.name
    order = [("fsync", str(staged)), ("replace", str(new)), ("fsync", str(models)), ("unlink", str(old))]
    assert [event for event in disk_events if event in order] == order


def test_every_file_the_package_writes_is_on_the_disk_before_its_rename(tmp_path, disk_events):
    path = (tmp_path / "out" / "student.compact").resolve()
    write_atomic(path, b"complete")
    (temporary,) = {name for kind, name in disk_events if kind == "fsync" and name.endswith(".tmp")}
    assert disk_events[:3] == [("fsync", temporary), ("replace", str(path)), ("fsync", str(path.parent))]
    assert path.read_bytes() == b"complete" and sorted(path.parent.iterdir()) == [path]


def _hook_lines_of(load: Callable[[], object], program: str, monkeypatch, capsys) -> list[str]:
    """What the plugin's exception hook prints, as ``program``, for the error ``load`` raises."""
    with pytest.raises(Exception) as raised:  # what torch raises for a truncated zip
        load()
    monkeypatch.setattr(sys, "argv", [program])
    errors.print_user_errors(raised.type, raised.value, raised.tb)
    return capsys.readouterr().err.strip().splitlines()


def test_resuming_from_a_truncated_checkpoint_is_one_line(tmp_path, monkeypatch, capsys):
    """ns-train --load-dir on a file cut short (by a run older than the atomic saves) is named, as in ns-eval."""
    models = tmp_path / "run" / "nerfstudio_models"
    trainer = _trainer(models)
    trainer.save_checkpoint(9)
    checkpoint = models / "step-000000009.ckpt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    trainer.config.load_dir = models
    lines = _hook_lines_of(trainer._load_checkpoint, "ns-train", monkeypatch, capsys)
    assert len(lines) == 1 and lines[0].startswith(f"ns-train: {checkpoint} is not a readable checkpoint")


def test_ns_train_without_a_device_flag_trains_on_the_cpu_where_there_is_no_cuda(tmp_path, monkeypatch, capsys):
    """nerfstudio's default device is cuda: a plain ``ns-train distilled3dgs-teacher`` on a laptop died in torch."""
    from nerfstudio.configs.base_config import MachineConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = PluginTrainerConfig(
        method_name="m", experiment_name="e", output_dir=tmp_path, machine=MachineConfig(device_type="cuda")
    )
    trainer = config.setup()
    assert trainer.device == "cpu" and not trainer.mixed_precision
    assert "no CUDA device" in capsys.readouterr().out
    config.machine.device_type = "cpu"
    assert config.setup().device == "cpu" and "no CUDA device" not in capsys.readouterr().out


def test_both_methods_train_with_the_plugin_trainer():
    from distilled3dgs_ns.method_configs import student_method, teacher_method

    assert isinstance(teacher_method.config, PluginTrainerConfig)
    assert isinstance(student_method.config, PluginTrainerConfig)


def test_eval_and_export_fail_alike_on_the_same_bad_file(tmp_path, monkeypatch, capsys):
    config = _teacher(tmp_path)
    checkpoint = next((config.parent / "nerfstudio_models").glob("*.ckpt"))
    checkpoint.write_bytes(b"not a checkpoint")
    monkeypatch.setattr(sys, "argv", ["distilled3dgs-eval", "--load-config", str(config)])
    with pytest.raises(SystemExit) as evaluated:
        eval_entrypoint()
    with pytest.raises(SystemExit) as exported:
        export_cli.entrypoint(["compact", "--load-config", str(config), "--output", str(tmp_path / "x.compact")])
    assert evaluated.value.code == exported.value.code == errors.USAGE_EXIT
    messages = capsys.readouterr().err
    assert messages.count(f"{checkpoint} is not a readable checkpoint") == 2 and "Traceback" not in messages


def test_nerfstudios_own_loader_names_a_truncated_checkpoint(tmp_path, monkeypatch, capsys):
    """ns-eval, ns-export and ns-viewer load the checkpoint with nerfstudio's ``eval_load_checkpoint``, before any of
    our code runs: the plugin's exception hook turns torch's error there into the same one line."""
    from types import SimpleNamespace

    from nerfstudio.utils.eval_utils import eval_load_checkpoint

    config = _teacher(tmp_path)
    checkpoint = next((config.parent / "nerfstudio_models").glob("*.ckpt"))
    checkpoint.write_bytes(checkpoint.read_bytes()[:500])
    load = functools.partial(eval_load_checkpoint, SimpleNamespace(load_dir=checkpoint.parent, load_step=None), None)
    lines = _hook_lines_of(load, "ns-eval", monkeypatch, capsys)
    assert len(lines) == 1 and lines[0].startswith(f"ns-eval: {checkpoint} is not a readable checkpoint")
    other = ValueError("not about checkpoints")
    errors.print_user_errors(ValueError, other, None)  # anything else keeps Python's report
    assert "ValueError: not about checkpoints" in capsys.readouterr().err


def test_decoding_onto_the_compact_file_itself_is_refused(tmp_path, capsys):
    compact = tmp_path / "scene.compact"
    compact.write_bytes(b"precious")
    with pytest.raises(SystemExit):
        export_cli.entrypoint(["decode", "--input", str(compact), "--output", str(tmp_path / "." / "scene.compact")])
    assert compact.read_bytes() == b"precious" and "is the compact file itself" in capsys.readouterr().err


def test_a_folder_given_as_compact_file_is_named(tmp_path):
    from distilled3dgs_ns.compression import read_compact

    with pytest.raises(CompactFormatError, match="is a folder, not a compact file"):
        read_compact(tmp_path)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_an_unusable_output_dir_is_one_line(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(RunSetupError, match="is a file; pass a folder"):
        Run(RunConfig(data=tmp_path, output_dir=a_file), log=lambda _: None).prepare_output_dir()
    with pytest.raises(RunSetupError, match="cannot be created"):
        Run(RunConfig(data=tmp_path, output_dir=a_file / "below"), log=lambda _: None).prepare_output_dir()


# ------------------------------------------------------------------------------------------------ teachers


def test_a_student_given_as_teacher_is_refused(tmp_path):
    model = make_model(StudentModelConfig(num_downscales=0), num_points=20)
    config = write_teacher(tmp_path / "student", model)
    config.write_text(config.read_text().replace("distilled3dgs-teacher", "distilled3dgs-student"))
    with pytest.raises(TeacherLoadError, match="is a distilled student, not a teacher"):
        load_teacher(config, "cpu")


def test_the_same_teacher_twice_is_a_warning(tmp_path):
    config = _teacher(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ensemble = TeacherEnsemble.load([config, config], "cpu")
    assert len(ensemble) == 2 and any("listed 2 times" in str(w.message) for w in caught)


# ------------------------------------------------------------------------------------------------ presets, hook


@pytest.mark.parametrize(
    ("text", "message"),
    [("variants: [perturbd]", "one of standard, perturbed, dropout"), ("teacher_steps: twenty", "expected int")],
)
def test_a_bad_preset_value_fails_when_parsed(tmp_path, text, message):
    preset = tmp_path / "mine.yaml"
    preset.write_text(text)
    with pytest.raises(PresetError, match=message):
        parse_config(["--preset", str(preset)])


def test_user_errors_print_as_one_line_other_errors_keep_their_traceback(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/usr/bin/ns-train"])
    errors.print_user_errors(TeacherLoadError, TeacherLoadError(Path("t.yml"), "bad", "fix it"), None)
    assert capsys.readouterr().err.startswith("ns-train: teacher t.yml: bad")
    try:
        raise KeyError("bug")
    except KeyError as error:
        errors.print_user_errors(KeyError, error, error.__traceback__)
    assert "Traceback" in capsys.readouterr().err
