"""FusedAdam is torch's Adam, one pass per parameter: the same updates, and the densification's state surgery works."""

from __future__ import annotations

import torch

from distilled3dgs_ns.optimizers import FusedAdam


def test_fused_adam_takes_torchs_adam_steps_on_the_cpu():
    torch.manual_seed(0)
    start = torch.randn(200, 15, 3)
    plain, fused = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    reference = torch.optim.Adam([plain], lr=1e-2, eps=1e-15)
    optimizer = FusedAdam([fused], lr=1e-2, eps=1e-15)
    assert optimizer.param_groups[0]["fused"] is True
    for _ in range(10):
        grad = torch.randn_like(start)
        plain.grad, fused.grad = grad.clone(), grad.clone()
        reference.step()
        optimizer.step()
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    assert not torch.equal(fused, start)


def test_fused_adam_keeps_an_explicit_choice_and_accepts_param_groups():
    param = torch.nn.Parameter(torch.zeros(3))
    assert FusedAdam([param], lr=0.1, fused=False).param_groups[0]["fused"] is False
    assert FusedAdam([{"params": [param]}], lr=0.1).param_groups[0]["fused"] is True


def test_fused_adam_state_follows_a_replaced_parameter():
    """gsplat's densification moves a parameter's state to its replacement; the fused step then updates that one."""
    param = torch.nn.Parameter(torch.ones(4, 3))
    optimizer = FusedAdam([param], lr=0.1)
    param.grad = torch.ones_like(param)
    optimizer.step()
    state = optimizer.state.pop(param)
    grown = torch.nn.Parameter(torch.cat([param.detach(), param.detach()[:2]]))
    state = {k: v if k == "step" else torch.cat([v, torch.zeros_like(v[:2])]) for k, v in state.items()}
    optimizer.param_groups[0]["params"] = [grown]
    optimizer.state[grown] = state
    grown.grad = torch.ones_like(grown)
    before = grown.detach().clone()
    optimizer.step()
    assert bool((grown < before).all())
    assert float(optimizer.state[grown]["step"]) == 2.0
