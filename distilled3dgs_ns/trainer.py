"""nerfstudio's trainer with checkpoints that appear whole or not at all.

nerfstudio's ``Trainer.save_checkpoint`` writes ``step-<N>.ckpt`` in place; a run killed during that write (Ctrl-C,
out of memory, a closed laptop) leaves a truncated file under the final name, and resuming with ``--load-dir`` then
fails inside ``torch.load``. This trainer lets nerfstudio write the checkpoint in a staging folder beside
``nerfstudio_models`` (not inside it: nerfstudio's loader parses the step out of *every* file name there) and moves it
in with one ``os.replace``, so the folder only ever holds complete checkpoints. The checkpoint's contents stay
nerfstudio's own.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils import comms

from distilled3dgs_ns.checkpoints import CHECKPOINT_GLOB, checkpoint_name

STAGING_SUFFIX = ".saving"


class AtomicCheckpointTrainer(Trainer):
    """``Trainer`` whose ``save_checkpoint`` stages the file and moves it into place."""

    config: AtomicCheckpointTrainerConfig

    def save_checkpoint(self, step: int) -> None:
        if not comms.is_main_process():
            return
        models = self.checkpoint_dir
        staging = models.with_name(models.name + STAGING_SUFFIX)
        shutil.rmtree(staging, ignore_errors=True)  # a half-written file from a killed save
        self.checkpoint_dir = staging
        try:
            super().save_checkpoint(step)  # nerfstudio's contents, written in staging
        finally:
            self.checkpoint_dir = models
        models.mkdir(parents=True, exist_ok=True)
        name = checkpoint_name(step)
        os.replace(staging / name, models / name)
        staging.rmdir()
        if self.config.save_only_latest_checkpoint:
            for old in models.glob(CHECKPOINT_GLOB):
                if old.name != name:
                    old.unlink()


@dataclass
class AtomicCheckpointTrainerConfig(TrainerConfig):
    """nerfstudio's trainer settings; checkpoints are written atomically."""

    _target: type = field(default_factory=lambda: AtomicCheckpointTrainer)
