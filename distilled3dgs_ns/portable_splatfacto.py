"""Splatfacto that runs on any device: gsplat on CUDA, our pure-PyTorch rasteriser elsewhere.

Nerfstudio 1.1.5's ``SplatfactoModel`` hard-codes CUDA in two places (seed colours, intrinsics), builds an LPIPS
network that downloads weights, and cannot resume training (optimizers keep the pre-checkpoint parameters). This
subclass fixes those and nothing else, so teacher and student inherit splatfacto's behaviour (densification strategy,
SH schedule, losses, camera optimiser) on every device. It stays a ``SplatfactoModel`` so the viewer's special cases
and ``ns-export gaussian-splat`` keep working.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.scene_box import OrientedBox
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes
from nerfstudio.engine.optimizers import Optimizers
from nerfstudio.model_components.lib_bilagrid import BilateralGrid, color_correct
from nerfstudio.models.splatfacto import (
    RGB2SH,
    SplatfactoModel,
    SplatfactoModelConfig,
    num_sh_bases,
    random_quat_tensor,
)
from nerfstudio.utils.colors import get_color
from pytorch_msssim import SSIM
from torchmetrics.image import PeakSignalNoiseRatio

from distilled3dgs_ns.checkpoints import check_finite, gaussian_state
from distilled3dgs_ns.cpu_threads import AdaptiveThreads, FixedThreads, thread_policy
from distilled3dgs_ns.depth import (
    DEPTH_KEY,
    DepthMapError,
    depth_abs_rel,
    downscale_depth,
    exponential_weight,
    inverse_depth_l1,
)
from distilled3dgs_ns.lpips_metric import OptionalLPIPS
from distilled3dgs_ns.rasterization import rasterization
from distilled3dgs_ns.schedules import PAPER_RUN_LENGTH, run_length_of
from distilled3dgs_ns.strategy import CappedStrategy
from distilled3dgs_ns.viewer_controls import SplitScreenDefault, StartAtTrainingCamera

GAUSSIAN_PARAM_NAMES = ("means", "scales", "quats", "features_dc", "features_rest", "opacities")
VISER_BACKGROUND = (0.1490, 0.1647, 0.2157)
"""Splatfacto's eval background for random-background training: viser's default grey."""


def world_to_camera(camera_to_worlds: torch.Tensor) -> torch.Tensor:
    """nerfstudio camera-to-world ``[C, 3, 4]`` (OpenGL axes) to gsplat world-to-camera ``[C, 4, 4]`` (OpenCV axes)."""
    rotation = camera_to_worlds[:, :3, :3] * camera_to_worlds.new_tensor([1.0, -1.0, -1.0])
    translation = camera_to_worlds[:, :3, 3:4]
    rotation_inv = rotation.transpose(1, 2)
    viewmats = torch.zeros(
        camera_to_worlds.shape[0], 4, 4, dtype=camera_to_worlds.dtype, device=camera_to_worlds.device
    )
    viewmats[:, :3, :3] = rotation_inv
    viewmats[:, :3, 3:4] = -rotation_inv @ translation
    viewmats[:, 3, 3] = 1.0
    return viewmats


@dataclass
class PortableSplatfactoModelConfig(SplatfactoModelConfig):
    """Splatfacto on any device (see module docstring)."""

    _target: type = field(default_factory=lambda: PortableSplatfactoModel)
    rasterizer: Literal["auto", "gsplat", "torch"] = "auto"
    """auto: gsplat's CUDA kernels for CUDA tensors (our pure-PyTorch rasteriser, with one warning, where they cannot
    be built), the pure-PyTorch rasteriser on any other device; gsplat: gsplat or a one-line error; torch: the
    pure-PyTorch rasteriser everywhere (for comparisons and debugging)."""
    max_gaussians: int | None = None
    """Cap on the count during densification (None: splatfacto's uncapped growth); for same-budget comparisons."""
    cpu_threads: int | None = None
    """torch threads when training on a CPU. None: as many as the cores other programs leave free, re-checked every
    second (at most torch's default, or OMP_NUM_THREADS), since torch's threads stall each other on a shared core;
    a number: exactly that many."""
    depth_weight: float = 0.0
    """Weight of the inverse-depth L1 against the depth maps (--pipeline.datamanager.depth-maps) at the start of the
    run (the official teachers': 1.0); 0: off."""
    depth_weight_final: float = 0.3
    """Its weight at the end of the run, reached by exponential decay from depth_weight. The official code ends at
    0.01 after 30k steps (the paper presets' value); on 1500-step teachers that switches the loss off too early
    (benchmarks/depth_teacher.py: depth error 11% lower with 0.01, 35% with 0.3, PSNR unchanged)."""


class PortableSplatfactoModel(SplatfactoModel):
    """Splatfacto with a device-agnostic render path, optional LPIPS, size metrics and a working resume."""

    config: PortableSplatfactoModelConfig

    def populate_modules(self) -> None:
        # Model.__init__ calls this before the device indicator exists, so tensors are made on the CPU and moved
        # with the module by the pipeline, exactly as splatfacto does (but without its `.cuda()` calls).
        self.start_view = StartAtTrainingCamera()
        self.split_default = SplitScreenDefault()
        means, colors = self._initial_points()
        num_points = means.shape[0]
        distances, _ = self.k_nearest_sklearn(means, 3)
        avg_dist = torch.from_numpy(distances).mean(dim=-1, keepdim=True).clamp_min(1e-7)
        features_dc, features_rest = self._initial_features(colors, num_points)
        self.gauss_params = torch.nn.ParameterDict(
            {
                "means": torch.nn.Parameter(means),
                "scales": torch.nn.Parameter(torch.log(avg_dist.repeat(1, 3))),
                "quats": torch.nn.Parameter(random_quat_tensor(num_points)),
                "features_dc": torch.nn.Parameter(features_dc),
                "features_rest": torch.nn.Parameter(features_rest),
                "opacities": torch.nn.Parameter(torch.logit(0.1 * torch.ones(num_points, 1))),
            }
        )
        self.camera_optimizer = self.config.camera_optimizer.setup(num_cameras=self.num_train_data, device="cpu")
        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.ssim = SSIM(data_range=1.0, size_average=True, channel=3)
        self.lpips = OptionalLPIPS()
        self.step = 0
        self.crop_box = None
        if self.config.background_color == "random":
            self.background_color = torch.tensor(VISER_BACKGROUND)
        else:
            self.background_color = get_color(self.config.background_color)
        if self.config.use_bilateral_grid:
            self.bil_grids = BilateralGrid(
                num=self.num_train_data,
                grid_X=self.config.grid_shape[0],
                grid_Y=self.config.grid_shape[1],
                grid_W=self.config.grid_shape[2],
            )
        self.strategy = self._make_strategy()
        self.strategy_state = self.strategy.initialize_state(scene_scale=1.0)
        self.cpu_policy: AdaptiveThreads | FixedThreads | None = None
        self.run_length = PAPER_RUN_LENGTH

    def _initial_points(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Seed points (and their uint8 colours, if any), or splatfacto's uniform random cube."""
        if self.seed_points is not None and not self.config.random_init:
            colors = self.seed_points[1] if self.seed_points[1].shape[0] > 0 else None
            return self.seed_points[0].float().cpu(), None if colors is None else colors.float().cpu()
        return (torch.rand((self.config.num_random, 3)) - 0.5) * self.config.random_scale, None

    def _initial_features(self, colors: torch.Tensor | None, num_points: int) -> tuple[torch.Tensor, torch.Tensor]:
        """SH coefficients: DC from the seed colours when there are any (logits when sh_degree is 0), else random."""
        rest = torch.zeros((num_points, num_sh_bases(self.config.sh_degree) - 1, 3))
        if colors is None:
            return torch.rand(num_points, 3), rest
        rgb = colors / 255.0
        dc = RGB2SH(rgb) if self.config.sh_degree > 0 else torch.logit(rgb, eps=1e-10)
        return dc, rest

    def _make_strategy(self) -> CappedStrategy:
        """Splatfacto's densification strategy (gsplat's DefaultStrategy), capped at ``max_gaussians``."""
        cfg = self.config
        return CappedStrategy(
            max_gaussians=cfg.max_gaussians,
            prune_opa=cfg.cull_alpha_thresh,
            grow_grad2d=cfg.densify_grad_thresh,
            grow_scale3d=cfg.densify_size_thresh,
            grow_scale2d=cfg.split_screen_size,
            prune_scale3d=cfg.cull_scale_thresh,
            prune_scale2d=cfg.cull_screen_size,
            refine_scale2d_stop_iter=cfg.stop_screen_size_at,
            refine_start_iter=cfg.warmup_length,
            refine_stop_iter=cfg.stop_split_at,
            reset_every=cfg.reset_alpha_every * cfg.refine_every,
            refine_every=cfg.refine_every,
            pause_refine_after_reset=self.num_train_data + cfg.refine_every,
            absgrad=cfg.use_absgrad,
            revised_opacity=False,
            verbose=True,
        )

    # ----------------------------------------------------------------------------------------------------- training

    def set_run_length(self, run_length: int) -> None:
        """Resolve the schedules written as fractions of the run."""
        self.run_length = run_length

    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> list[TrainingCallback]:
        trainer = training_callback_attributes.trainer
        if trainer is not None:
            self.set_run_length(run_length_of(trainer))
        pipeline = training_callback_attributes.pipeline
        if self.config.depth_weight > 0 and pipeline is not None:
            self.check_depth_targets(pipeline.datamanager)
        return super().get_training_callbacks(training_callback_attributes)

    def check_depth_targets(self, datamanager) -> None:
        """Before the first step: the depth loss needs training images with depth maps."""
        if not getattr(datamanager, "has_depth", False):
            raise DepthMapError(
                f"--pipeline.model.depth-weight {self.config.depth_weight} needs depth maps: pass "
                "--pipeline.datamanager.depth-maps metric|relative with data whose frames have depth_file_path"
            )

    def depth_weight_at(self, step: int) -> float:
        """The depth loss's weight at ``step``: depth_weight decaying exponentially to depth_weight_final."""
        return exponential_weight(self.config.depth_weight, self.config.depth_weight_final, step / self.run_length)

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> dict[str, torch.Tensor]:
        """Splatfacto's losses, plus the inverse-depth L1 where the image has a depth target and the weight is on."""
        loss_dict = super().get_loss_dict(outputs, batch, metrics_dict)
        weight = self.depth_weight_at(self.step) if self.training and DEPTH_KEY in batch else 0.0
        if weight > 0:
            target = downscale_depth(batch[DEPTH_KEY], self._get_downscale_factor()).to(self.device)
            loss_dict["depth_loss"] = weight * inverse_depth_l1(outputs["depth"], target)
        return loss_dict

    def step_cb(self, optimizers: Optimizers, step: int) -> None:
        super().step_cb(optimizers, step)
        self._rebind_optimizers()
        self.follow_free_cores()

    def follow_free_cores(self) -> None:
        """On a CPU, re-choose torch's thread count from the machine's load (see cpu_threads.py): before every
        training step and every render for evaluation or the viewer (which renders on its own thread)."""
        if self.device.type != "cpu":
            return
        if self.cpu_policy is None:
            self.cpu_policy = thread_policy(self.config.cpu_threads)
        self.cpu_policy.update()

    def step_post_backward(self, step: int) -> None:
        """Densify as splatfacto does, then stop a diverged training before its NaNs reach a checkpoint."""
        super().step_post_backward(step)
        check_finite(self.gauss_params, f"step {step}")

    def load_state_dict(self, state_dict, **kwargs):  # type: ignore[override]  # splatfacto's signature
        """Refuse a diverged checkpoint (ns-eval, ns-export, ns-viewer and resuming all load through here)."""
        check_finite(gaussian_state(state_dict), "the loaded checkpoint")
        return super().load_state_dict(state_dict, **kwargs)

    def _rebind_optimizers(self) -> None:
        """Point each Gaussian optimizer at the current parameter, carrying its Adam state over.

        The trainer builds optimizers before loading a checkpoint, and loading replaces every Gaussian parameter with
        one of the checkpoint's size; without this, resumed training steps stale tensors (nerfstudio issue #3554).
        """
        for name in GAUSSIAN_PARAM_NAMES:
            optimizer = self.optimizers.get(name)
            param = self.gauss_params[name]
            if optimizer is None or optimizer.param_groups[0]["params"][0] is param:
                continue
            stale = optimizer.param_groups[0]["params"][0]
            state = optimizer.state.pop(stale, None)
            optimizer.param_groups[0]["params"] = [param]
            if state is not None and all(
                not torch.is_tensor(v) or v.dim() == 0 or v.shape == param.shape for v in state.values()
            ):
                optimizer.state[param] = {  # a 0-dim step count stays where torch keeps it (the CPU)
                    k: v.to(param.device) if torch.is_tensor(v) and v.dim() > 0 else v for k, v in state.items()
                }

    # -------------------------------------------------------------------------------------------------- rendering

    @property
    def run_sh_degree(self) -> int | None:
        """SH degree rendered at the current step (splatfacto's one-more-band-every-interval schedule)."""
        if self.config.sh_degree == 0:
            return None
        return min(self.step // self.config.sh_degree_interval, self.config.sh_degree)

    def frozen_geometry(self, camera: Cameras, downscale: float = 1.0) -> dict:
        """``rasterization()`` / ``hit_counts()`` geometry arguments of the detached, activated Gaussians for one
        camera at ``1 / downscale`` of its resolution: the one place analysis passes (importance, hit counts, top
        contributors) turn the model and a camera into render arguments."""
        camera.rescale_output_resolution(1 / downscale)
        try:
            intrinsics = camera.get_intrinsics_matrices().to(self.device)
            width, height = int(camera.width.item()), int(camera.height.item())
        finally:
            camera.rescale_output_resolution(downscale)
        return dict(
            means=self.means.detach(),
            quats=self.quats.detach(),
            scales=torch.exp(self.scales.detach()),
            opacities=torch.sigmoid(self.opacities.detach()).squeeze(-1),
            viewmats=world_to_camera(camera.camera_to_worlds.to(self.device)),
            Ks=intrinsics,
            width=width,
            height=height,
            rasterize_mode=self.config.rasterize_mode,
        )

    def _render_opacities(self, opacities: torch.Tensor) -> torch.Tensor:
        """Hook for render-time opacity changes (e.g. Gaussian dropout); activated opacities ``[N]`` in and out."""
        return opacities

    def _rasterize(self, camera: Cameras, camera_to_worlds: torch.Tensor, render_mode: str, crop_ids=None):
        """Render the (cropped) Gaussians for one camera at the current training resolution."""
        params = {k: v if crop_ids is None else v[crop_ids] for k, v in self.gauss_params.items()}
        colors = torch.cat((params["features_dc"][:, None, :], params["features_rest"]), dim=1)
        sh_degree = self.run_sh_degree
        if sh_degree is None:
            colors = torch.sigmoid(colors[:, 0, :])
        scale = self._get_downscale_factor()
        camera.rescale_output_resolution(1 / scale)
        intrinsics = camera.get_intrinsics_matrices().to(self.device)
        width, height = int(camera.width.item()), int(camera.height.item())
        camera.rescale_output_resolution(scale)
        self.last_size = (height, width)
        return rasterization(
            means=params["means"],
            quats=params["quats"],
            scales=torch.exp(params["scales"]),
            opacities=self._render_opacities(torch.sigmoid(params["opacities"]).squeeze(-1)),
            colors=colors,
            viewmats=world_to_camera(camera_to_worlds.to(self.device)),
            Ks=intrinsics,
            width=width,
            height=height,
            packed=False,
            near_plane=0.01,
            far_plane=1e10,
            render_mode=render_mode,
            sh_degree=sh_degree,
            sparse_grad=False,
            absgrad=self.strategy.absgrad,
            rasterize_mode=self.config.rasterize_mode,
            backend=self.config.rasterizer,
        )

    @torch.no_grad()
    def get_outputs_for_camera(self, camera: Cameras, obb_box: OrientedBox | None = None) -> dict[str, torch.Tensor]:
        """Splatfacto's eval render (ns-eval, our evaluation, the viewer's thread) at the thread count of the moment."""
        self.follow_free_cores()
        return super().get_outputs_for_camera(camera, obb_box)

    def get_outputs(self, camera: Cameras) -> dict[str, torch.Tensor]:
        """Render one camera: ``rgb``, ``accumulation``, ``background`` and (eval, or if asked) ``depth``."""
        if not isinstance(camera, Cameras):
            raise TypeError(f"get_outputs expects a nerfstudio Cameras object, got {type(camera).__name__}")
        if self.training:
            if camera.shape[0] != 1:
                raise ValueError(f"training renders one camera at a time, got {camera.shape[0]}")
            camera_to_worlds = self.camera_optimizer.apply_to_camera(camera)
        else:
            camera_to_worlds = camera.camera_to_worlds

        crop_ids = None
        if self.crop_box is not None and not self.training:
            crop_ids = self.crop_box.within(self.means).squeeze()
            if crop_ids.sum() == 0:
                return self.get_empty_outputs(
                    int(camera.width.item()), int(camera.height.item()), self._get_background_color()
                )

        wants_depth = self.config.output_depth_during_training or self.config.depth_weight > 0
        render_mode = "RGB+ED" if wants_depth or not self.training else "RGB"
        render, alpha, self.info = self._rasterize(camera, camera_to_worlds, render_mode, crop_ids)
        if self.training:
            self.strategy.step_pre_backward(
                self.gauss_params, self.optimizers, self.strategy_state, self.step, self.info
            )

        background = self._get_background_color()
        rgb = torch.clamp(render[..., :3] + (1 - alpha) * background, 0.0, 1.0)
        if self.config.use_bilateral_grid and self.training and camera.metadata and "cam_idx" in camera.metadata:
            height, width = rgb.shape[1:3]
            rgb = self._apply_bilateral_grid(rgb, camera.metadata["cam_idx"], height, width)
        outputs = {"rgb": rgb.squeeze(0), "accumulation": alpha.squeeze(0), "background": background}
        if render_mode == "RGB+ED":
            depth = render[..., 3:4]
            outputs["depth"] = torch.where(alpha > 0, depth, depth.detach().max()).squeeze(0)
        if not self.training:
            outputs["background"] = background.expand(*outputs["rgb"].shape[:2], 3)
        return outputs

    # ---------------------------------------------------------------------------------------------------- metrics

    @property
    def size_mb(self) -> float:
        """Size of the Gaussian parameters as stored in a checkpoint or an uncompressed PLY (float32), in MB."""
        return sum(p.numel() for p in self.gauss_params.values()) * 4 / 1e6

    def get_image_metrics_and_images(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """PSNR, SSIM, LPIPS (when its weights are available), Gaussian count and size, as ``ns-eval`` reports them."""
        gt_rgb = self.composite_with_background(self.get_gt_img(batch["image"]), outputs["background"])
        predicted_rgb = outputs["rgb"]
        images = {"img": torch.cat([gt_rgb, predicted_rgb], dim=1)}
        metrics = self._image_metrics(predicted_rgb, gt_rgb, prefix="")
        if self.config.color_corrected_metrics:
            metrics.update(self._image_metrics(color_correct(predicted_rgb, gt_rgb), gt_rgb, prefix="cc_"))
        metrics["num_gaussians"] = float(self.num_points)
        metrics["size_mb"] = self.size_mb
        if DEPTH_KEY in batch and "depth" in outputs:
            error = depth_abs_rel(outputs["depth"], batch[DEPTH_KEY].to(self.device))
            if error is not None:
                metrics["depth_abs_rel"] = error
        return metrics, images

    def _image_metrics(self, predicted: torch.Tensor, gt: torch.Tensor, prefix: str) -> dict[str, float]:
        predicted = torch.moveaxis(predicted, -1, 0)[None]
        gt = torch.moveaxis(gt, -1, 0)[None]
        metrics = {f"{prefix}psnr": float(self.psnr(gt, predicted)), f"{prefix}ssim": float(self.ssim(gt, predicted))}
        lpips = self.lpips(predicted, gt)
        if lpips is not None:
            metrics[f"{prefix}lpips"] = lpips
        return metrics
