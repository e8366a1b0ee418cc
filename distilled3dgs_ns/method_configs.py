"""The nerfstudio methods this plugin registers (entry points in ``pyproject.toml``).

Import-order rule: nerfstudio imports this module while it builds its method table, so nothing here (or imported
from here) may import ``nerfstudio.utils.eval_utils``, ``nerfstudio.scripts.*`` or ``nerfstudio.configs.method_configs``
at module level; doing so binds the table before our methods are in it (``KeyError`` in ns-eval / ns-viewer).
"""

from __future__ import annotations

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification

from distilled3dgs_ns.depth import DepthDatamanagerConfig
from distilled3dgs_ns.errors import install_excepthook
from distilled3dgs_ns.names import PAPER_RUN_LENGTH, STUDENT_METHOD, TEACHER_METHOD
from distilled3dgs_ns.optimizers import FusedAdam
from distilled3dgs_ns.student import StudentModelConfig
from distilled3dgs_ns.student_pipeline import StudentPipelineConfig
from distilled3dgs_ns.teacher import TeacherModelConfig
from distilled3dgs_ns.trainer import PluginTrainerConfig

install_excepthook()  # our UserErrors inside ns-train / ns-eval / ns-export: one message, not a traceback


def splatfacto_optimizers(max_steps: int = PAPER_RUN_LENGTH) -> dict:
    """Splatfacto's per-parameter Adam settings (learning rates from the 3DGS paper), with torch's fused Adam."""

    def adam(lr: float) -> AdamOptimizerConfig:
        return AdamOptimizerConfig(_target=FusedAdam, lr=lr, eps=1e-15)

    return {
        "means": {
            "optimizer": adam(1.6e-4),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=1.6e-6, max_steps=max_steps),
        },
        "features_dc": {"optimizer": adam(0.0025), "scheduler": None},
        "features_rest": {"optimizer": adam(0.0025 / 20), "scheduler": None},
        "opacities": {"optimizer": adam(0.05), "scheduler": None},
        "scales": {"optimizer": adam(0.005), "scheduler": None},
        "quats": {"optimizer": adam(0.001), "scheduler": None},
        "camera_opt": {
            "optimizer": adam(1e-4),
            "scheduler": ExponentialDecaySchedulerConfig(
                lr_final=5e-7, max_steps=max_steps, warmup_steps=1000, lr_pre_warmup=0
            ),
        },
        "bilateral_grid": {
            "optimizer": adam(2e-3),
            "scheduler": ExponentialDecaySchedulerConfig(
                lr_final=1e-4, max_steps=max_steps, warmup_steps=1000, lr_pre_warmup=0
            ),
        },
    }


def teacher_config() -> PluginTrainerConfig:
    """Splatfacto's trainer settings with the teacher model, trained by the plugin's Trainer (see trainer.py)."""
    return PluginTrainerConfig(
        method_name=TEACHER_METHOD,
        steps_per_eval_image=100,
        steps_per_eval_batch=0,
        steps_per_save=2000,
        steps_per_eval_all_images=1000,
        max_num_iterations=PAPER_RUN_LENGTH,
        mixed_precision=False,
        pipeline=VanillaPipelineConfig(
            datamanager=DepthDatamanagerConfig(
                dataparser=NerfstudioDataParserConfig(load_3D_points=True),
                cache_images_type="uint8",
            ),
            model=TeacherModelConfig(),
        ),
        optimizers=splatfacto_optimizers(),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    )


teacher_method = MethodSpecification(
    config=teacher_config(),
    description=(
        "Distilled-3DGS teacher (stage 1): splatfacto with --pipeline.model.variant standard | perturbed | dropout. "
        "Runs on CUDA (gsplat) or any CPU (--machine.device-type cpu)."
    ),
)


def student_config() -> PluginTrainerConfig:
    """The teacher's trainer settings with the distillation pipeline and the student model."""
    config = teacher_config()
    config.method_name = STUDENT_METHOD
    config.pipeline = StudentPipelineConfig(datamanager=config.pipeline.datamanager, model=StudentModelConfig())
    return config


student_method = MethodSpecification(
    config=student_config(),
    description=(
        "Distilled-3DGS student (stage 2): distils --pipeline.teachers t1/config.yml t2/config.yml ... into a small "
        "splat (teacher-blend loss, geometry loss, densify-then-prune). Runs on CUDA (gsplat) or any CPU."
    ),
)
