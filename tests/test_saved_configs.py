"""Saved ``config.yml`` files keep loading: every module path and class they name is frozen here.

nerfstudio pickles a run's config as YAML with ``python/object`` and ``python/name`` tags, so ``ns-viewer``,
``ns-eval``, ``distilled3dgs-eval`` and a student's ``--pipeline.teachers`` import the classes by their module path.
Moving or renaming one breaks every trained run a user has. The files under ``tests/data/saved_configs`` were
written by ``ns-train`` (a capture run's teacher and student, and a lego-100 teacher of 2026-12 whose optimizers are
``FusedAdam``; paths replaced).
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path

import pytest
import yaml

SAVED = Path(__file__).parent / "data" / "saved_configs"
TAG = re.compile(r"!!python/(?:object|name):(distilled3dgs_ns\.[\w.]+)")

FROZEN = {
    "distilled3dgs_ns.depth.DepthDatamanager",
    "distilled3dgs_ns.depth.DepthDatamanagerConfig",
    "distilled3dgs_ns.optimizers.FusedAdam",
    "distilled3dgs_ns.regularizers.DropoutConfig",
    "distilled3dgs_ns.regularizers.PerturbationConfig",
    "distilled3dgs_ns.schedules.RunWindow",
    "distilled3dgs_ns.structure_loss.StructureLossConfig",
    "distilled3dgs_ns.student.StudentModel",
    "distilled3dgs_ns.student.StudentModelConfig",
    "distilled3dgs_ns.student_pipeline.StudentPipeline",
    "distilled3dgs_ns.student_pipeline.StudentPipelineConfig",
    "distilled3dgs_ns.teacher.TeacherModel",
    "distilled3dgs_ns.teacher.TeacherModelConfig",
    "distilled3dgs_ns.trainer.PluginTrainer",
    "distilled3dgs_ns.trainer.PluginTrainerConfig",
}
"""What the saved configs name; a new class in a config.yml is added here, an old one never leaves."""


def _named(path: Path) -> set[str]:
    return set(TAG.findall(path.read_text()))


def test_the_saved_configs_name_exactly_the_frozen_classes():
    assert set().union(*(_named(p) for p in SAVED.glob("*.yml"))) == FROZEN


@pytest.mark.parametrize("dotted", sorted(FROZEN))
def test_every_frozen_class_imports_from_its_module_path(dotted):
    module, _, name = dotted.rpartition(".")
    assert isinstance(getattr(importlib.import_module(module), name), type), dotted


def _dataclasses_in(value, seen: set[int]):
    """Every dataclass instance reachable from ``value`` (fields, lists, tuples, dict values)."""
    if id(value) in seen:
        return
    seen.add(id(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        yield value
        for name in vars(value):
            yield from _dataclasses_in(getattr(value, name), seen)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _dataclasses_in(item, seen)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _dataclasses_in(item, seen)


@pytest.mark.parametrize("name", ["teacher", "student"])
def test_a_saved_config_loads_with_every_field_of_todays_classes(name):
    """YAML restores the saved fields only: a field added since must have a class-level default (a plain default,
    not a default_factory), or an old run's config lacks it and nerfstudio fails on first use."""
    import distilled3dgs_ns.method_configs  # noqa: F401  (nerfstudio's configs import in this order, as ns-train does)

    config = yaml.load((SAVED / f"{name}.yml").read_text(), Loader=yaml.Loader)
    assert config.method_name == f"distilled3dgs-{name}"
    missing = [
        f"{type(obj).__name__}.{field.name}"
        for obj in _dataclasses_in(config, set())
        if type(obj).__module__.startswith("distilled3dgs_ns")
        for field in dataclasses.fields(obj)
        if not hasattr(obj, field.name)
    ]
    assert not missing, f"fields an old config.yml lacks and that have no class-level default: {missing}"
