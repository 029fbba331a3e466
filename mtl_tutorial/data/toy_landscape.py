"""The two-objective toy landscape of CAGrad (Liu et al. 2021) and Nash-MTL (Navon et al. 2022).

Two losses of one shared parameter x = (x1, x2) ∈ R². Above the x1 axis they are steep log
valleys, below it two wide quadratics whose minima (x1 = ±7) differ:

    f1 = log(max(|0.5(-x1 - 7) - tanh(-x2)|, 5e-6)) + 6
    f2 = log(max(|0.5(-x1 + 3) + tanh(-x2) + 2|, 5e-6)) + 6
    g1 = ((-x1 + 7)² + 0.1(-x2 - 8)²) / 10 - 20
    g2 = ((-x1 - 7)² + 0.1(-x2 - 8)²) / 10 - 20
    c1 = max(tanh(0.5 x2), 0),  c2 = max(tanh(-0.5 x2), 0)
    L1 = c1 f1 + c2 g1,  L2 = c1 f2 + c2 g2

The papers start from ``TOY_STARTS`` and draw the Pareto set as the segment x2 = -8.3552,
x1 ∈ [-7, 7]. That is exact only at x1 = 0; ``toy_pareto_set`` solves for the exact set, which
bends down to x2 = -8.4345 at x1 = ±7.
"""

from __future__ import annotations

from typing import Callable

import torch

LOWER = 5e-6
TOY_STARTS = torch.tensor([[-8.5, 7.5], [-8.5, -5.0], [9.0, 9.0]])
"""(3, 2): the three starting points of the CAGrad and Nash-MTL figures."""


def toy_losses(x: torch.Tensor) -> torch.Tensor:
    """(L1, L2) of the toy landscape: x (..., 2) -> (..., 2), differentiable, broadcasting."""
    if x.shape[-1] != 2:
        raise ValueError(f"x must have shape (..., 2), one (x1, x2) per row, got {tuple(x.shape)}")
    x1, x2 = x[..., 0], x[..., 1]
    f1 = torch.clamp((0.5 * (-x1 - 7) - torch.tanh(-x2)).abs(), LOWER).log() + 6
    f2 = torch.clamp((0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs(), LOWER).log() + 6
    g1 = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    g2 = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    c1 = torch.clamp(torch.tanh(0.5 * x2), min=0)
    c2 = torch.clamp(torch.tanh(-0.5 * x2), min=0)
    return torch.stack([c1 * f1 + c2 * g1, c1 * f2 + c2 * g2], dim=-1)


def toy_pareto_set(num_points: int = 101) -> torch.Tensor:
    """The exact Pareto set of the toy, (num_points, 2) float64, from x1 = -7 to x1 = 7.

    Below the axis L_t = c2(x2) q_t(x) with c2 = tanh(-x2/2). A point is Pareto optimal when
    w ∇L1 + (1 - w) ∇L2 = 0 for some w ∈ [0, 1]: the x1 part gives x1 = 7(2w - 1), the x2 part
    d/dx2 [c2(x2) (19.6 w(1 - w) - 20 + 0.01 (x2 + 8)²)] = 0, solved here by bisection on [-10, -8].
    """
    if num_points < 2:
        raise ValueError(f"num_points must be >= 2, got {num_points}")
    w = torch.linspace(0, 1, num_points, dtype=torch.float64)
    offset = 19.6 * w * (1 - w) - 20

    def slope(x2: torch.Tensor) -> torch.Tensor:  # d/dx2 of c2(x2) (offset + 0.01 (x2 + 8)²)
        c2 = torch.tanh(-0.5 * x2)
        return -0.5 * (1 - c2**2) * (offset + 0.01 * (x2 + 8) ** 2) + c2 * 0.02 * (x2 + 8)

    low, high = torch.full_like(w, -10.0), torch.full_like(w, -8.0)  # slope(low) < 0 < slope(high)
    for _ in range(60):
        middle = (low + high) / 2
        negative = slope(middle) < 0
        low, high = torch.where(negative, middle, low), torch.where(negative, high, middle)
    return torch.stack([7 * (2 * w - 1), (low + high) / 2], dim=-1)


def toy_trajectories(
    aggregate: Callable[[torch.Tensor], torch.Tensor],
    starts: torch.Tensor = TOY_STARTS,
    num_steps: int = 2000,
    lr: float = 0.02,
) -> torch.Tensor:
    """Adam on x from each start along aggregate(grads): the paths, (num_steps + 1, S, 2) float64.

    starts: (S, 2). Each step, for every start, grads (2, 2) holds ∇L1 and ∇L2 as rows and
    aggregate maps it to the direction (2,) that Adam follows, e.g. ``aggregation.pcgrad``.
    The starts run side by side (one Adam per start, all in one tensor). The papers run 100 000
    Adam steps of lr 0.001; a larger lr draws the same paths in fewer steps.
    """
    if starts.dim() != 2 or starts.shape[1] != 2:
        raise ValueError(f"starts must have shape (S, 2), got {tuple(starts.shape)}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    x = starts.detach().double().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr)
    path = [x.detach().clone()]
    for _ in range(num_steps):
        losses = toy_losses(x).sum(dim=0)  # (2,): each start's losses depend on its own x only
        grads = torch.stack([torch.autograd.grad(losses[0], x, retain_graph=True)[0],
                             torch.autograd.grad(losses[1], x)[0]], dim=1)  # (S, 2 tasks, 2)
        x.grad = torch.stack([aggregate(task_grads) for task_grads in grads])
        optimizer.step()
        path.append(x.detach().clone())
    return torch.stack(path)
