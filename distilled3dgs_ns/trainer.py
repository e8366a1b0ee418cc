"""nerfstudio's trainer with the plugin's fixes for what goes wrong around a training, not inside it.

- Checkpoints appear whole or not at all. nerfstudio's ``Trainer.save_checkpoint`` writes ``step-<N>.ckpt`` in place;
  a run killed during that write (Ctrl-C, out of memory, a closed laptop) leaves a truncated file under the final
  name, and resuming with ``--load-dir`` then fails inside ``torch.load``. Here nerfstudio writes the checkpoint in a
  staging folder beside ``nerfstudio_models`` (not inside it: nerfstudio's loader parses the step out of *every* file
  name there) and one rename moves it in, after the data reached the disk (``durable``). The checkpoint's contents
  stay nerfstudio's own.
- nerfstudio's default device is ``cuda``, so a plain ``ns-train distilled3dgs-teacher`` on a machine without CUDA
  died in a torch traceback; the plugin's methods run on any CPU, so that case trains on the CPU and says so.

The config class's name is saved in every ``config.yml``: it is deliberately general, so later fixes join it here.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

import torch
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils.decorators import check_main_thread
from nerfstudio.utils.rich_utils import CONSOLE

from distilled3dgs_ns.checkpoints import CHECKPOINT_GLOB, checkpoint_name
from distilled3dgs_ns.durable import publish

STAGING_SUFFIX = ".saving"


class PluginTrainer(Trainer):
    """``Trainer`` that falls back on the CPU without CUDA and saves checkpoints atomically."""

    config: PluginTrainerConfig

    def __init__(self, config: PluginTrainerConfig, local_rank: int = 0, world_size: int = 1) -> None:
        if config.machine.device_type == "cuda" and not torch.cuda.is_available():
            CONSOLE.print(
                "ns-train: no CUDA device here; training on the CPU instead (pass --machine.device-type cpu to say so)"
            )
            config.machine.device_type = "cpu"
        super().__init__(config, local_rank, world_size)

    @check_main_thread  # as nerfstudio's: only the main process saves
    def save_checkpoint(self, step: int) -> None:
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
        publish(staging / name, models / name)  # on the disk before the older checkpoint goes
        staging.rmdir()
        if self.config.save_only_latest_checkpoint:
            for old in models.glob(CHECKPOINT_GLOB):
                if old.name != name:
                    old.unlink()


@dataclass
class PluginTrainerConfig(TrainerConfig):
    """nerfstudio's trainer settings, trained by ``PluginTrainer``."""

    _target: type = field(default_factory=lambda: PluginTrainer)
