"""The CUDA path, where a GPU is present (skipped elsewhere, so CI never runs it): the torch rasteriser on CUDA against
itself on the CPU, every prune on CUDA against the CPU, and a teacher and a student training on CUDA, pruning
included. Nothing of the plugin had run on a GPU when these were written: a GPU machine runs them first
(``python -m pytest -q tests/test_cuda.py``), then ``benchmarks/gpu_check.py``."""

from __future__ import annotations

import pytest
import torch
from helpers import look_at_camera, make_model, textured_splat
from test_frame import _rotation
from test_rasterization import PARAMS, grads_of, make_scene, render
from test_student import POSITIONS, SIZE, _cameras, _optimizers, _student

from distilled3dgs_ns.compression.frame import Similarity, transform_gaussians
from distilled3dgs_ns.compression.model_io import gaussians_of
from distilled3dgs_ns.pruning import PruneEvent, PruneSchedule
from distilled3dgs_ns.teacher import TeacherModelConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def test_the_torch_rasteriser_on_cuda_renders_and_differentiates_as_on_the_cpu():
    scene = make_scene(n=400, n_cams=3, width=61, height=47, sh_bases=16)
    cpu = {k: v.float().requires_grad_(k in PARAMS) if torch.is_tensor(v) else v for k, v in scene.items()}
    gpu = {k: v.float().to(CUDA).requires_grad_(k in PARAMS) if torch.is_tensor(v) else v for k, v in scene.items()}
    outputs = {name: render(s, sh_degree=3, backgrounds=s["backgrounds"], render_mode="RGB+ED", backend="torch")
               for name, s in (("cpu", cpu), ("cuda", gpu))}  # fmt: skip
    assert outputs["cuda"][0].device.type == "cuda"
    for a, b in zip(outputs["cpu"][:2], outputs["cuda"][:2], strict=True):
        torch.testing.assert_close(b.cpu(), a, atol=1e-4, rtol=1e-4)
    as_double = {name: tuple(o.double() for o in out[:2]) for name, out in outputs.items()}
    grads = {"cpu": grads_of(cpu, as_double["cpu"]), "cuda": grads_of(gpu, as_double["cuda"])}
    for k in PARAMS:
        cosine = torch.nn.functional.cosine_similarity(
            grads["cpu"][k].flatten().double(), grads["cuda"][k].cpu().flatten().double(), dim=0
        )
        assert cosine > 0.9999, k


@pytest.mark.parametrize(
    "event",
    [
        PruneEvent("sample", 0.5, 0.6),
        PruneEvent("share", 0.5, 0.3),
        PruneEvent("mass", 0.5, 0.9),
        PruneEvent("count", 0.5, 100.0),
    ],  # fmt: skip
)
def test_every_prune_keeps_on_cuda_what_it_keeps_on_the_cpu(event):
    importance = torch.rand(1000, generator=torch.Generator().manual_seed(0)) ** 4
    importance[::7] = 0.0
    keep = {device: PruneSchedule(events=[event], seed=3).keep_mask(event, importance.to(device))
            for device in ("cpu", "cuda")}  # fmt: skip
    assert keep["cuda"].device.type == "cuda" and torch.equal(keep["cuda"].cpu(), keep["cpu"])


def _train(model, steps: int, camera) -> list[float]:
    """``steps`` steps on one view of a fixed random target, with the model's own hooks (densify, prune)."""
    optimizers = _optimizers(model)
    target = {"image": torch.rand(SIZE, SIZE, 3, generator=torch.Generator().manual_seed(1)).to(CUDA)}
    losses = []
    for step in range(steps):
        model.step_cb(optimizers, step)
        optimizers.zero_grad_all()
        loss = sum(model.get_loss_dict(model.get_outputs(camera), target).values())
        loss.backward()
        optimizers.optimizer_step_all()
        model.step_post_backward(step)
        losses.append(float(loss))
    return losses


@pytest.mark.parametrize("variant", ["standard", "perturbed", "dropout"])
def test_a_teacher_trains_on_cuda(variant):
    model = make_model(TeacherModelConfig(num_downscales=0, background_color="black", variant=variant), 300).to(CUDA)
    model.train()
    losses = _train(model, 30, look_at_camera(POSITIONS[0], size=SIZE).to(CUDA))
    assert model.gauss_params["means"].device.type == "cuda" and losses[-1] < losses[0]


def test_a_student_samples_and_cuts_on_cuda():
    model = _student(prune_sample_factor=0.6, prune_mass=0.9, prune_sample_at=0.5, prune_mass_at=0.75,
                     prune_top_filter=True)  # fmt: skip
    model = model.to(CUDA)
    model.set_importance_views(_cameras().to(CUDA))
    model.set_run_length(20)  # sampling prune at step 10, mass cut at 15
    model.train()
    losses = _train(model, 20, look_at_camera(POSITIONS[0], size=SIZE).to(CUDA))
    assert 0 < model.num_points < 300 and model.gauss_params["means"].device.type == "cuda"
    assert all(torch.isfinite(torch.tensor(losses)))


def test_a_cuda_model_moves_to_the_capture_frame_as_a_cpu_one():
    """The export of a COLMAP scene (a dataparser transform that is not the identity) from a model on CUDA."""
    model = textured_splat(sh_degree=3, num_points=300, seed=5)
    move = Similarity(_rotation(7), torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64), 1.7)
    on_cpu = transform_gaussians(gaussians_of(model, drop_invisible=False), move)
    on_cuda = transform_gaussians(gaussians_of(model.to(CUDA), drop_invisible=False), move)
    for name in ("means", "scales", "quats", "features_rest"):
        assert getattr(on_cuda, name).device.type == "cuda"
        torch.testing.assert_close(getattr(on_cuda, name).cpu(), getattr(on_cpu, name))


def test_an_empty_crop_box_renders_the_background_on_cuda():
    from nerfstudio.data.scene_box import OrientedBox

    model = make_model(TeacherModelConfig(num_downscales=0, background_color="white"), 200).to(CUDA).eval()
    far = torch.tensor([100.0, 100.0, 100.0])
    model.crop_box = OrientedBox(R=torch.eye(3), T=far, S=torch.ones(3))  # on the CPU, as the viewer makes it
    outputs = model.get_outputs(look_at_camera(POSITIONS[0], size=SIZE).to(CUDA))
    assert outputs["rgb"].device.type == "cuda" and outputs["background"].device.type == "cuda"
