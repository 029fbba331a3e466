"""The CAGrad / Nash-MTL two-objective toy: pinned losses, the exact Pareto set, trajectories."""

import pytest
import torch

from mtl_tutorial.aggregation import equal_weighting, mgda
from mtl_tutorial.data import TOY_STARTS, toy_losses, toy_pareto_set, toy_trajectories
from mtl_tutorial.objectives import pareto_front


def test_pinned_losses_at_the_starts_and_on_the_pareto_set():
    expected = torch.tensor([[6.5524, 7.9008], [4.0599, -19.4215], [7.9440, 6.6915]])
    torch.testing.assert_close(toy_losses(TOY_STARTS), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(toy_losses(torch.tensor([0.0, -8.3552])), torch.tensor([-15.0916, -15.0916]),
                               atol=1e-4, rtol=0)
    assert toy_losses(torch.zeros(4, 3, 2)).shape == (4, 3, 2)  # broadcasts over leading dimensions
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 2\)"):
        toy_losses(torch.zeros(3))


def test_pareto_set_is_exact_and_pareto_stationary():
    points = toy_pareto_set(9)
    torch.testing.assert_close(points[[0, 4, 8]], torch.tensor(
        [[-7.0, -8.4345], [0.0, -8.3551], [7.0, -8.4345]], dtype=torch.float64), atol=1e-4, rtol=0)
    x = points.clone().requires_grad_(True)
    losses = toy_losses(x).sum(dim=0)
    grads = torch.stack([torch.autograd.grad(losses[t], x, retain_graph=True)[0] for t in range(2)], dim=1)
    for task_grads in grads:  # (2 tasks, 2): some convex combination of the gradients vanishes
        assert mgda(task_grads)[0].norm().item() < 1e-6
    assert pareto_front(toy_losses(points)).all()  # no point of the set dominates another
    nearby = torch.cat([points + torch.tensor([0.0, shift], dtype=torch.float64) for shift in (-0.2, 0.2)])
    candidates = toy_losses(torch.cat([points, nearby]))
    assert pareto_front(candidates)[: len(points)].all()  # nothing just above or below beats the set


def test_trajectories_start_at_the_starts_and_descend():
    paths = toy_trajectories(equal_weighting, TOY_STARTS, num_steps=200, lr=0.05)
    assert paths.shape == (201, 3, 2)
    torch.testing.assert_close(paths[0], TOY_STARTS.double())
    mean_loss = toy_losses(paths).mean(dim=-1)  # (201, 3)
    assert (mean_loss[-1] < mean_loss[0]).all()
    with pytest.raises(ValueError, match=r"starts must have shape \(S, 2\)"):
        toy_trajectories(equal_weighting, torch.zeros(2))
