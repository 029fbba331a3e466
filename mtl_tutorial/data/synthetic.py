"""Synthetic regression tasks whose relatedness is a knob (MMoE recipe, Ma et al., KDD 2018, sec. 3.2).

Two tasks, exactly as in the paper:

1. draw two orthonormal vectors ``u1, u2`` in R^d (random Gaussian vectors, then Gram-Schmidt);
2. task weights ``w1 = c u1`` and ``w2 = c (p u1 + sqrt(1 - p^2) u2)``, so ``cos(w1, w2) = p``;
3. inputs ``x ~ N(0, I_d)``;
4. labels ``y_t = w_t.x + sum_{i=1..m} sin(alpha_i w_t.x + beta_i) + eps_t``,
   with ``m = num_sin`` and noise ``eps_t ~ N(0, noise_std^2)``.

Because ``x ~ N(0, I)``, the linear parts ``w_s.x`` and ``w_t.x`` are jointly Gaussian with Pearson
correlation ``cos(w_s, w_t)``: the knob ``p`` *is* the correlation of the tasks' linear parts. The
sinusoids make the tasks non-linear, and, because ``alpha_i, beta_i`` are drawn once per dataset and
shared by all tasks (as in the paper), the labels' correlation still grows with ``p``.
The paper does not give the distribution of ``alpha_i, beta_i``; we draw both from N(0, 1).

More than two tasks (our extension): every task ``t >= 2`` gets its own fresh orthonormal direction,
``w_t = c (p u1 + sqrt(1 - p^2) u_t)``. With two tasks this is the paper's recipe. Pairwise, the linear
parts then correlate as ``corr(1, t) = p`` and ``corr(s, t) = p^2`` for ``s, t >= 2``, ``s != t``: task 1
is the hub that the others resemble. ``CorrelatedTasks.linear_correlation()`` returns that matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CorrelatedTasks:
    """A synthetic multi-task regression set: ``y[:, t]`` is task t's label for input ``x``.

    x: (N, d) inputs; y: (N, T) labels; weights: (T, d) task vectors w_t;
    alphas, betas: (m,) sinusoid parameters shared by the tasks; correlation: the knob p.
    """

    x: torch.Tensor
    y: torch.Tensor
    weights: torch.Tensor
    alphas: torch.Tensor
    betas: torch.Tensor
    correlation: float

    def linear_parts(self) -> torch.Tensor:
        """The tasks' linear parts ``w_t.x``: (N, T)."""
        return self.x @ self.weights.T

    def linear_correlation(self) -> torch.Tensor:
        """The correlation that the construction gives the linear parts: (T, T) cosines of the w_t."""
        unit = self.weights / self.weights.norm(dim=1, keepdim=True)
        return unit @ unit.T


def _orthonormal_vectors(num_vectors: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """``num_vectors`` random orthonormal vectors in R^dim: (num_vectors, dim), by Gram-Schmidt."""
    vectors = torch.randn(num_vectors, dim, generator=generator, dtype=torch.float64)
    basis: list[torch.Tensor] = []
    for v in vectors:
        for u in basis:
            v = v - (v @ u) * u  # remove the component along every earlier direction
        basis.append(v / v.norm())
    return torch.stack(basis)


def _check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def make_correlated_tasks(
    num_samples: int,
    num_tasks: int = 2,
    correlation: float = 0.5,
    input_dim: int = 100,
    c: float = 1.0,
    num_sin: int = 10,
    noise_std: float = 0.01,
    seed: int = 0,
) -> CorrelatedTasks:
    """``num_tasks`` regression tasks on shared inputs whose linear parts correlate by ``correlation``.

    Follows MMoE's synthetic recipe (see the module docstring for the math and the >2-task
    construction): x: (num_samples, input_dim), y: (num_samples, num_tasks), float32.
    Same arguments and seed, same numbers.

    >>> data = make_correlated_tasks(1000, correlation=0.9)
    >>> data.x.shape, data.y.shape, data.weights.shape
    (torch.Size([1000, 100]), torch.Size([1000, 2]), torch.Size([2, 100]))
    """
    _check_positive_int("num_samples", num_samples)
    _check_positive_int("input_dim", input_dim)
    if not isinstance(num_sin, int) or isinstance(num_sin, bool) or num_sin < 0:
        raise ValueError(f"num_sin must be a non-negative int, got {num_sin!r}")
    if not isinstance(num_tasks, int) or isinstance(num_tasks, bool) or num_tasks < 2:
        raise ValueError(f"num_tasks must be an int >= 2 (multi-task), got {num_tasks!r}")
    if not -1.0 <= correlation <= 1.0:
        raise ValueError(f"correlation must lie in [-1, 1] (it is a cosine), got {correlation!r}")
    if input_dim < num_tasks:
        raise ValueError(
            f"input_dim={input_dim} is too small for {num_tasks} orthonormal task directions; "
            f"use input_dim >= num_tasks"
        )
    if not c > 0:
        raise ValueError(f"c (the scale of the task weights) must be > 0, got {c!r}")
    if not noise_std >= 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")

    generator = torch.Generator().manual_seed(seed)
    u = _orthonormal_vectors(num_tasks, input_dim, generator)  # (T, d): u1, u2, ..., uT
    p = float(correlation)
    weights = torch.empty(num_tasks, input_dim, dtype=torch.float64)
    weights[0] = c * u[0]
    weights[1:] = c * (p * u[0] + math.sqrt(1.0 - p * p) * u[1:])
    alphas = torch.randn(num_sin, generator=generator, dtype=torch.float64)
    betas = torch.randn(num_sin, generator=generator, dtype=torch.float64)
    x = torch.randn(num_samples, input_dim, generator=generator, dtype=torch.float64)
    linear = x @ weights.T  # (N, T): w_t.x
    # sum_i sin(alpha_i w_t.x + beta_i): (N, T, m) summed over the sinusoids
    waves = torch.sin(linear.unsqueeze(-1) * alphas + betas).sum(dim=-1)
    noise = noise_std * torch.randn(num_samples, num_tasks, generator=generator, dtype=torch.float64)
    return CorrelatedTasks(
        x=x.float(),
        y=(linear + waves + noise).float(),
        weights=weights.float(),
        alphas=alphas.float(),
        betas=betas.float(),
        correlation=p,
    )
