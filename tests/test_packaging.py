"""What a plain (not editable) install gets: the wheel built from this checkout must carry what the commands read at
run time, the presets of ``configs/`` above all (``distilled3dgs-run --preset demo`` is the README's main command)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import REPO_ROOT

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="the sources are listed with git")

_FIND_PRESETS = """
import distilled3dgs_ns
from distilled3dgs_ns.presets import available_presets, preset_path
print(distilled3dgs_ns.__file__)
print(" ".join(available_presets()))
print(preset_path("demo"))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel of the checkout's tracked sources, unpacked as pip would install it."""
    scratch = tmp_path_factory.mktemp("wheel")
    source = scratch / "source"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    for name in tracked.split("\n"):
        if name and (REPO_ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(scratch), "."],
        cwd=source, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = scratch.glob("distilled3dgs_ns-*.whl")
    site = scratch / "site"
    zipfile.ZipFile(wheel).extractall(site)
    return site


def test_an_installed_wheel_finds_every_preset(installed, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(installed)}
    found = subprocess.run(
        [sys.executable, "-c", _FIND_PRESETS], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert found.returncode == 0, found.stderr[-2000:]
    module, names, demo = found.stdout.strip().split("\n")
    assert Path(module).is_relative_to(installed)  # the wheel's copy, not the checkout
    assert names.split() == sorted(path.stem for path in (REPO_ROOT / "configs").glob("*.yaml"))
    assert (
        Path(demo).is_relative_to(installed)
        and Path(demo).read_bytes() == (REPO_ROOT / "configs/demo.yaml").read_bytes()
    )


def test_the_wheel_holds_every_module_of_the_checkout(installed):
    package = REPO_ROOT / "distilled3dgs_ns"
    modules = {path.relative_to(REPO_ROOT).as_posix() for path in package.rglob("*.py")}
    shipped = {path.relative_to(installed).as_posix() for path in (installed / "distilled3dgs_ns").rglob("*.py")}
    assert modules - shipped == set()  # a new subpackage must be named in pyproject.toml's packages
    script = installed / "distilled3dgs_ns" / "web" / "viewer.js"  # report.html's viewer: package data
    assert script.read_bytes() == (package / "web" / "viewer.js").read_bytes()
