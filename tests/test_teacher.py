"""The teacher model on the CPU: renders, variants acting when scheduled, densification, metrics and resume."""

from __future__ import annotations

import threading

import pytest
import torch
from helpers import look_at_camera, make_model
from nerfstudio.engine.optimizers import Optimizers

from distilled3dgs_ns.cpu_threads import AdaptiveThreads, thread_policy
from distilled3dgs_ns.method_configs import splatfacto_optimizers
from distilled3dgs_ns.teacher import TeacherModelConfig


def _teacher(variant: str = "standard", **overrides):
    config = TeacherModelConfig(variant=variant, num_downscales=0, **overrides)
    return make_model(config)


def _optimizers(model) -> Optimizers:
    wanted = model.get_param_groups()
    config = {k: v for k, v in splatfacto_optimizers(max_steps=100).items() if k in wanted}
    return Optimizers(config, wanted)


def _train_step(model, optimizers: Optimizers, step: int, camera, target: torch.Tensor) -> torch.Tensor:
    """One step as nerfstudio's trainer does it: callbacks, forward, loss, backward, optimizer, post-step callback."""
    model.step_cb(optimizers, step)
    optimizers.zero_grad_all()
    outputs = model.get_outputs(camera)
    loss = sum(model.get_loss_dict(outputs, {"image": target}).values())
    loss.backward()
    optimizers.optimizer_step_all()
    model.step_post_backward(step)
    return outputs["rgb"].detach()


def test_outputs_in_eval_and_training():
    model = _teacher()
    camera = look_at_camera((2.0, 0.5, 1.0), size=24)
    model.eval()
    with torch.no_grad():
        out = model.get_outputs_for_camera(camera)
    assert out["rgb"].shape == (24, 24, 3) and out["depth"].shape == (24, 24, 1)
    assert out["accumulation"].shape == (24, 24, 1) and out["background"].shape == (24, 24, 3)
    assert out["accumulation"].max() > 0.5  # the Gaussians are in view
    model.train()
    model.step_cb(_optimizers(model), 0)
    out = model.get_outputs(camera)
    assert out["rgb"].requires_grad and "depth" not in out
    assert out["rgb"].device.type == "cpu"


def test_dropout_changes_the_training_render_only_when_scheduled():
    camera = look_at_camera((2.0, 0.5, 1.0), size=24)
    renders = {}
    for variant in ("standard", "dropout"):
        model = _teacher(variant)
        model.train()
        model.run_length = 30
        model.step_cb(_optimizers(model), 0)
        model.config.background_color = "black"
        for step in (15, 16):  # the window of a 30-step run fires at 16..24
            model.step = step
            renders[variant, step] = model.get_outputs(camera)["rgb"].detach()
        model.eval()
        with torch.no_grad():
            renders[variant, "eval"] = model.get_outputs(camera)["rgb"]
    assert torch.equal(renders["standard", 15], renders["dropout", 15])
    assert not torch.allclose(renders["standard", 16], renders["dropout", 16], atol=1e-3)
    assert torch.equal(renders["standard", "eval"], renders["dropout", "eval"])


def test_perturbation_changes_parameters_only_when_scheduled():
    model = _teacher("perturbed", warmup_length=1000)  # no densification in this test
    model.run_length = 300  # the window fires every 10 steps from 160 to 240
    model.config.perturbation.grad_threshold = 0.0  # every visible Gaussian qualifies...
    model.config.perturbation.percent_dense = 1.0  # ...whatever its size
    model.train()
    optimizers = _optimizers(model)
    camera = look_at_camera((2.0, 0.5, 1.0), size=24)
    target = torch.rand(24, 24, 3)
    jumps = {}
    for step in range(157, 163):
        before = model.means.detach().clone()
        _train_step(model, optimizers, step, camera, target)
        jumps[step] = (model.means.detach() - before).abs().max().item()
    # ordinary Adam steps move means by ~lr (1.6e-4); a perturbation by ~0.1
    assert jumps[160] > 5e-2
    assert all(jump < 1e-2 for step, jump in jumps.items() if step != 160), jumps


def test_densification_runs_on_cpu():
    model = _teacher(warmup_length=2, refine_every=2, densify_grad_thresh=1e-9, stop_split_at=100)
    model.train()
    optimizers = _optimizers(model)
    camera = look_at_camera((2.0, 0.5, 1.0), size=24)
    target = torch.rand(24, 24, 3)
    count = model.num_points
    for step in range(12):  # refinement pauses for num_train_data + refine_every steps after the step-0 reset
        _train_step(model, optimizers, step, camera, target)
    assert model.num_points > count
    for name, param in model.gauss_params.items():
        assert optimizers.optimizers[name].param_groups[0]["params"][0] is param


def test_metrics_without_lpips_weights(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # no AlexNet weights there
    model = _teacher()
    model.eval()
    camera = look_at_camera((2.0, 0.5, 1.0), size=24)
    with torch.no_grad():
        outputs = model.get_outputs_for_camera(camera)
        metrics, images = model.get_image_metrics_and_images(outputs, {"image": torch.rand(24, 24, 3)})
    assert set(metrics) == {"psnr", "ssim", "num_gaussians", "size_mb"}
    assert metrics["num_gaussians"] == model.num_points
    assert metrics["size_mb"] == pytest.approx(model.num_points * (3 + 3 + 4 + 3 + 45 + 1) * 4 / 1e6)
    assert "AlexNet weights not found" in model.lpips.unavailable_reason
    assert images["img"].shape == (24, 48, 3)


def test_lpips_is_not_part_of_the_checkpoint():
    state = _teacher().state_dict()
    assert not any("lpips" in key for key in state)


def test_resume_rebinds_optimizers_to_loaded_parameters():
    trained = _teacher()
    trained.train()
    optimizers = _optimizers(trained)
    camera = look_at_camera((2.0, 0.5, 1.0), size=24)
    target = torch.rand(24, 24, 3)
    for step in range(3):
        _train_step(trained, optimizers, step, camera, target)
    # a fresh model of another size, with optimizers built before the checkpoint is loaded (as the trainer does)
    resumed = make_model(TeacherModelConfig(num_downscales=0), num_points=50)
    resumed.train()
    resumed_optimizers = _optimizers(resumed)
    resumed.load_state_dict(trained.state_dict())
    resumed_optimizers.load_optimizers({k: v.state_dict() for k, v in optimizers.optimizers.items()})
    _train_step(resumed, resumed_optimizers, 3, camera, target)
    for name, param in resumed.gauss_params.items():
        optimizer = resumed_optimizers.optimizers[name]
        assert optimizer.param_groups[0]["params"][0] is param
        assert optimizer.state[param]["exp_avg"].shape == param.shape
    assert resumed.num_points == trained.num_points


def test_a_cpu_training_applies_its_thread_setting_at_the_first_step():
    start = torch.get_num_threads()
    try:
        fixed = _teacher(cpu_threads=1)
        fixed.step_cb(_optimizers(fixed), 0)
        assert torch.get_num_threads() == 1
        torch.set_num_threads(start)
        thread_policy.cache_clear()  # one per process: an earlier test's, made at another count on a busy machine
        adaptive = _teacher()
        adaptive.step_cb(_optimizers(adaptive), 0)
        assert isinstance(adaptive.cpu_policy, AdaptiveThreads)
        assert adaptive.cpu_policy.max_threads == start
    finally:
        torch.set_num_threads(start)
        thread_policy.cache_clear()


def test_a_render_on_another_thread_uses_the_setting_too():
    """The viewer renders on its own thread, whose torch thread count is its own."""
    model = _teacher(cpu_threads=1)
    model.eval()
    seen: list[int] = []

    def viewer_render() -> None:
        model.get_outputs_for_camera(look_at_camera((2.0, 0.5, 1.0), size=16))
        seen.append(torch.get_num_threads())

    worker = threading.Thread(target=viewer_render)
    worker.start()
    worker.join()
    assert seen == [1]
