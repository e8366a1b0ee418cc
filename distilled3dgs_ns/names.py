"""Names the plugin's modules and tools share, each written once.

A leaf: it imports no other module of the plugin and nothing heavy, so any module can take its names from here
without an import cycle or the seconds a nerfstudio import costs. Method names and file names are part of every saved
run folder (config.yml, checkpoints beside it), so they never change.
"""

from __future__ import annotations

from typing import Literal

TEACHER_METHOD = "distilled3dgs-teacher"
STUDENT_METHOD = "distilled3dgs-student"
"""ns-train's method names (``MethodSpecification``s in method_configs.py; saved in every config.yml)."""

PAPER_RUN_LENGTH = 30_000
"""The paper's (and 3DGS's) steps per training: every step-valued setting of the official code assumes it."""

TeacherVariant = Literal["standard", "perturbed", "dropout"]
"""The paper's three teachers: plain 3DGS, random parameter perturbation, Gaussian dropout."""

FormatName = Literal["spz", "sog", "glb", "glb-spz", "compressed-ply", "splat", "ply"]
"""The viewer file formats (``compression.formats.FORMATS`` holds how each is written and read)."""

DATAPARSER_TRANSFORMS = "dataparser_transforms.json"
"""What ns-train writes beside config.yml: the similarity from the capture's frame into nerfstudio's."""
