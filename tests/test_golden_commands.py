"""The ns-train command line of every preset's every training, frozen as golden files.

A finished run's stages are fingerprinted by their command lines, so a refactor of the run that changes one (an option
moved, a default spelled differently) makes ``distilled3dgs-run`` refuse or retrain a user's finished run folder.
Regenerate with ``D3DGS_UPDATE_GOLDEN=1 python -m pytest tests/test_golden_commands.py`` only where a command line is
meant to change, and say so in the commit.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from distilled3dgs_ns.presets import available_presets
from distilled3dgs_ns.run import Run, ns_train_command, parse_config

GOLDEN = Path(__file__).parent / "data" / "golden_commands"
SCENE, OUT = Path("/SCENE"), Path("/OUT")
TEACHER_COUNT = 100_000
"""A stand-in for the standard teacher's final count (the student's budget and the baselines' derive from it)."""


def preset_commands(preset: str) -> list[tuple[str, list[str]]]:
    """Every training of ``preset`` with ``--baselines``: (stage, ns-train command line), in stage order."""
    config = parse_config(
        ["--preset", preset, "--data", str(SCENE), "--output-dir", str(OUT), "--device-type", "cpu", "--baselines"]
    )
    run = Run(config, log=lambda _: None)
    student_count = math.floor((config.student_budget_share or 0.15) * TEACHER_COUNT)
    trainings = run.planned_trainings(TEACHER_COUNT, student_count)
    return [(t.stage, ns_train_command(t, config, SCENE, run.runs, None)) for t in trainings]


@pytest.mark.parametrize("preset", available_presets())
def test_preset_command_lines_are_unchanged(preset):
    golden = GOLDEN / f"{preset}.txt"
    commands = "".join(f"{stage}: {' '.join(command)}\n" for stage, command in preset_commands(preset))
    if os.environ.get("D3DGS_UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(commands)
    assert golden.exists(), f"no golden file for preset {preset}; write it with D3DGS_UPDATE_GOLDEN=1"
    assert commands == golden.read_text(), (
        f"the ns-train command lines of preset {preset} changed: finished runs of it would be refused or retrained"
    )


@pytest.mark.parametrize("preset", available_presets())
def test_preset_command_lines_parse_as_ns_train_does(preset):
    """A preset whose option nerfstudio does not know fails here, not minutes into a user's run."""
    import tyro
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    for stage, command in preset_commands(preset):
        config = tyro.cli(AnnotatedBaseConfigUnion, args=command[1:])
        assert config.max_num_iterations == int(command[command.index("--max-num-iterations") + 1]), stage


def test_every_golden_file_has_a_preset():
    assert sorted(p.stem for p in GOLDEN.glob("*.txt")) == sorted(available_presets())
