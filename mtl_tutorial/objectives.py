"""The multi-task objective and what scalarising it can reach.

Multi-task learning with shared parameters θ and task parameters φ_t minimises one number,

    L(θ, φ_1..φ_T) = Σ_t λ_t L_t(θ, φ_t),        λ_t ≥ 0,

the *scalarisation* of the vector of task losses (L_1, ..., L_T) by the task weights λ_t.
Each choice of λ picks one trade-off between the tasks; the set of trade-offs that no other
parameter beats on every task at once is the *Pareto front*. A weighted sum reaches only the
points of the front where the front is convex (supported points): on a non-convex stretch no λ
has its minimum there (Das & Dennis, "A closer look at drawbacks of minimizing weighted sums of
objectives for Pareto set generation", 1997).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

LossFn = Callable[[torch.Tensor], torch.Tensor]
"""A vector of task losses: parameters (..., D) -> losses (..., T), broadcasting over leading dims."""


def check_scalar_losses(losses: Mapping[str, torch.Tensor]) -> None:
    """Raise unless ``losses`` maps one or more task names to 0-dim tensors L_t (reduced losses)."""
    if not losses:
        raise ValueError("losses is empty; pass one scalar loss per task, e.g. {'sentiment': loss}")
    for task, loss in losses.items():
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(
                f"loss of task {task!r} must be a 0-dim tensor, got {shape}; reduce it first, e.g. "
                f"loss.mean() (a loss function with reduction='none' returns one loss per example)"
            )


def weighted_sum(
    losses: Mapping[str, torch.Tensor], weights: Mapping[str, float] | None = None
) -> torch.Tensor:
    """Σ_t λ_t L_t over named scalar task losses; ``weights=None`` means λ_t = 1 for every task.

    losses: task name -> 0-dim tensor L_t; weights: task name -> λ_t (finite, ≥ 0), one per task.
    Returns a 0-dim tensor that autograd can differentiate.
    """
    check_scalar_losses(losses)
    if weights is None:
        return torch.stack(list(losses.values())).sum()
    tasks = ", ".join(sorted(losses))
    for task in weights:
        if task not in losses:
            raise ValueError(f"weight given for unknown task {task!r}; tasks are: {tasks}")
    for task in losses:
        if task not in weights:
            raise ValueError(f"no weight for task {task!r}; give one weight per task: {tasks}")
    for task, weight in weights.items():
        if not math.isfinite(float(weight)) or float(weight) < 0:
            raise ValueError(f"weight of task {task!r} must be finite and >= 0, got {weight!r}")
    return sum(float(weights[task]) * loss for task, loss in losses.items())


@dataclass(frozen=True)
class ScalarizationSweep:
    """Joint optima of λ L_1 + (1 - λ) L_2, one row per λ.

    lambdas: (K,) weights of task 1; params: (K, D) the minimiser found for each λ;
    losses: (K, 2) the task losses (L_1, L_2) at that minimiser.
    """

    lambdas: torch.Tensor
    params: torch.Tensor
    losses: torch.Tensor


def scalarization_sweep(
    loss_fn: LossFn,
    lambdas: Sequence[float] | torch.Tensor,
    starts: torch.Tensor,
    num_steps: int = 500,
    lr: float = 0.05,
) -> ScalarizationSweep:
    """Minimise λ L_1(θ) + (1 - λ) L_2(θ) for every λ in ``lambdas`` (two tasks, λ ∈ [0, 1]).

    loss_fn: θ (..., D) -> (L_1, L_2) (..., 2). starts: (S, D) starting points; Adam runs
    ``num_steps`` steps from every start for every λ at once (a (K, S, D) batch: the sum over the
    batch separates, so each row gets its own gradient), and the start with the lowest weighted
    loss wins. Several starts matter when the weighted loss has several local minima.
    """
    lambdas = torch.as_tensor(lambdas, dtype=torch.float32).flatten()
    if lambdas.numel() == 0 or bool(((lambdas < 0) | (lambdas > 1)).any()):
        raise ValueError(f"lambdas must be a non-empty list of numbers in [0, 1], got {lambdas.tolist()}")
    if starts.dim() != 2:
        raise ValueError(f"starts must have shape (S, D), got {tuple(starts.shape)}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    mix = torch.stack([lambdas, 1 - lambdas], dim=-1)[:, None, :]  # (K, 1, 2)
    params = starts.detach().float().expand(len(lambdas), -1, -1).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([params], lr=lr)
    for _ in range(num_steps):
        optimizer.zero_grad()
        (loss_fn(params) * mix).sum().backward()
        optimizer.step()
    with torch.no_grad():
        losses = loss_fn(params)  # (K, S, 2)
        best = (losses * mix).sum(-1).argmin(dim=1)  # (K,)
        rows = torch.arange(len(lambdas))
        return ScalarizationSweep(lambdas, params[rows, best].clone(), losses[rows, best].clone())


def pareto_front(points: torch.Tensor | Sequence[Sequence[float]], chunk_size: int = 512) -> torch.Tensor:
    """Which points no other point dominates (minimisation): a (N,) bool mask.

    points: (N, T), one row of task losses per candidate. Row j dominates row i when
    p_j ≤ p_i on every task and p_j < p_i on at least one. Identical rows do not dominate
    each other, so duplicates on the front are all kept. Cost O(N² T) time, compared in chunks of
    ``chunk_size`` candidates so that memory stays O(chunk_size · N · T).
    """
    points = torch.as_tensor(points, dtype=torch.float64)
    if points.dim() != 2:
        raise ValueError(f"points must have shape (N, T), got {tuple(points.shape)}")
    if not bool(torch.isfinite(points).all()):
        raise ValueError("points contain nan or inf; drop those rows first")
    dominated = torch.zeros(len(points), dtype=torch.bool)
    for start in range(0, len(points), chunk_size):
        candidates = points[start : start + chunk_size, None, :]  # (C, 1, T): the rows i we test
        no_worse = (points[None, :, :] <= candidates).all(-1)  # [i, j]: p_j <= p_i everywhere
        better = (points[None, :, :] < candidates).any(-1)  # [i, j]: p_j < p_i somewhere
        dominated[start : start + chunk_size] = (no_worse & better).any(dim=1)
    return ~dominated


def supported_points(
    points: torch.Tensor | Sequence[Sequence[float]], num_lambdas: int = 1001, tolerance: float = 1e-6
) -> torch.Tensor:
    """Which points some weighted sum reaches: a (N,) bool mask (two tasks, minimisation).

    points: (N, 2). Point i is *supported* when for some λ on a grid of ``num_lambdas`` values in
    [0, 1] it minimises λ p_1 + (1 - λ) p_2 over all points, to within ``tolerance``. Supported
    points lie on the convex hull of the set; Pareto points that are not supported sit on a
    non-convex stretch of the front, where no weighted sum has its minimum.
    """
    points = torch.as_tensor(points, dtype=torch.float64)
    if points.dim() != 2 or points.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2), got {tuple(points.shape)}")
    lambdas = torch.linspace(0, 1, num_lambdas, dtype=torch.float64)
    scores = points @ torch.stack([lambdas, 1 - lambdas])  # (N, K): weighted loss of point i under λ_k
    shortfall = (scores - scores.min(dim=0).values).min(dim=1).values  # (N,): distance to the best, best λ
    return shortfall <= tolerance


class TwoQuadratics:
    """Two convex quadratic task losses on θ ∈ R^D whose single-task optima differ.

    L_t(θ) = (θ - a_t)ᵀ A_t (θ - a_t), with A_t symmetric positive definite (D, D) and optimum a_t (D,).
    The weighted objective λ L_1 + (1 - λ) L_2 is again quadratic, so its minimiser is closed-form:

        θ*(λ) = (λ A_1 + (1 - λ) A_2)⁻¹ (λ A_1 a_1 + (1 - λ) A_2 a_2).
    """

    def __init__(
        self,
        optimum_1: Sequence[float],
        optimum_2: Sequence[float],
        curvature_1: torch.Tensor | Sequence[Sequence[float]],
        curvature_2: torch.Tensor | Sequence[Sequence[float]],
    ) -> None:
        self.optima = torch.tensor([list(optimum_1), list(optimum_2)], dtype=torch.float32)  # (2, D)
        self.curvatures = torch.stack(
            [torch.as_tensor(curvature_1, dtype=torch.float32), torch.as_tensor(curvature_2, dtype=torch.float32)]
        )  # (2, D, D)
        dim = self.optima.shape[1]
        if self.curvatures.shape != (2, dim, dim):
            raise ValueError(f"curvatures must be ({dim}, {dim}) matrices, got {tuple(self.curvatures.shape[1:])}")
        if not bool((torch.linalg.eigvalsh(self.curvatures) > 0).all()):
            raise ValueError("curvature matrices must be symmetric positive definite")

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        """Task losses (L_1, L_2): θ (..., D) -> (..., 2)."""
        diff = theta.unsqueeze(-2) - self.optima  # (..., 2, D)
        return torch.einsum("...ti,tij,...tj->...t", diff, self.curvatures, diff)

    def joint_optimum(self, lam: float) -> torch.Tensor:
        """The closed-form minimiser θ*(λ) of λ L_1 + (1 - λ) L_2: (D,)."""
        mix = torch.tensor([lam, 1.0 - lam])
        hessian = torch.einsum("t,tij->ij", mix, self.curvatures)
        rhs = torch.einsum("t,tij,tj->i", mix, self.curvatures, self.optima)
        return torch.linalg.solve(hessian, rhs)


def fonseca_fleming(theta: torch.Tensor) -> torch.Tensor:
    """Fonseca & Fleming's two-task problem (1995), whose Pareto front is non-convex: θ (..., D) -> (..., 2).

    L_1 = 1 - exp(-Σ_i (θ_i - 1/√D)²),  L_2 = 1 - exp(-Σ_i (θ_i + 1/√D)²).
    The Pareto set is the segment θ_i = s/√D, s ∈ [-1, 1]; a weighted sum only finds its two ends.
    """
    shift = 1.0 / math.sqrt(theta.shape[-1])
    return torch.stack(
        [
            1 - torch.exp(-((theta - shift) ** 2).sum(-1)),
            1 - torch.exp(-((theta + shift) ** 2).sum(-1)),
        ],
        dim=-1,
    )


class SharedLinearRegression:
    """T regression tasks on the same inputs, all predicted by ONE shared linear model θ ∈ R^D.

    x: (N, D) inputs; y: (N, T) targets. L_t(θ) = (1/N) Σ_n (x_n·θ - y_nt)², the extreme of hard
    sharing (no task parameters at all). With two tasks the weighted objective is least squares on
    the mixed targets λ y_1 + (1 - λ) y_2, so θ*(λ) = (XᵀX)⁻¹ Xᵀ (λ y_1 + (1 - λ) y_2).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if x.dim() != 2 or y.dim() != 2 or len(x) != len(y):
            raise ValueError(f"x must be (N, D) and y (N, T) with the same N, got {tuple(x.shape)}, {tuple(y.shape)}")
        self.x, self.y = x.float(), y.float()

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        """Task losses: θ (..., D) -> (..., T)."""
        predictions = (theta @ self.x.T).unsqueeze(-1)  # (..., N, 1)
        return ((predictions - self.y) ** 2).mean(dim=-2)

    def joint_optimum(self, lam: float) -> torch.Tensor:
        """The closed-form minimiser θ*(λ) of λ L_1 + (1 - λ) L_2 (two tasks): (D,)."""
        if self.y.shape[1] != 2:
            raise ValueError(f"joint_optimum(λ) is defined for two tasks, these data have {self.y.shape[1]}")
        targets = lam * self.y[:, 0] + (1 - lam) * self.y[:, 1]
        return torch.linalg.lstsq(self.x.double(), targets.double().unsqueeze(-1)).solution.squeeze(-1).float()
