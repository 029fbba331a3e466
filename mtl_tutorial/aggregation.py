"""Gradient aggregation: one update direction from the T task gradients of the shared parameters.

Stack the task gradients of the shared parameters θ as rows, ``grads: (T, P)`` with
g_t = ∇_θ L_t. Equal weighting steps along Σ_t g_t; when two rows point against each other
(g_i · g_j < 0, a *conflict*) part of one task's progress undoes the other's. The aggregators
below choose the direction differently:

    PCGrad (Yu et al. 2020)       project each g_i off every g_j it conflicts with, sum the results
    MGDA   (Sener & Koltun 2018)  the shortest vector in the convex hull of the g_t
    CAGrad (Liu et al. 2021)      the average g0, bent towards the worst-off task within radius c‖g0‖

Each of them returns a combination d = Σ_t α_t g_t whose weights α depend only on the Gram matrix
G = grads gradsᵀ (T, T) of dot products g_i · g_j: the ``*_weights(gram)`` functions compute α from
G, the functions named after the methods return d. ``GradientAggregation`` plugs an aggregator into
the training loop, with the gradients taken at the shared parameters (T backward passes) or, more
cheaply, at the shared representation (one).

The directions have different scales on purpose, as in the papers: PCGrad sums, MGDA returns a
convex combination (scale of one task), CAGrad starts from the average. Adam, the course's default
optimizer, is almost invariant to the scale of the gradient.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

METHODS = ("equal", "pcgrad", "mgda", "cagrad")
MODES = ("parameters", "representation")


def check_grads(grads: torch.Tensor) -> torch.Tensor:
    """``grads`` if it is a finite (T, P) tensor with T >= 2 tasks; a ValueError saying what is wrong otherwise."""
    if not isinstance(grads, torch.Tensor):
        raise TypeError(f"grads must be a tensor of shape (T, P), got {type(grads).__name__}")
    if grads.dim() != 2:
        raise ValueError(
            f"grads must have shape (T, P), one row per task, got {tuple(grads.shape)}; "
            f"flatten each task's gradient and stack them: torch.stack([g.flatten() for g in task_grads])"
        )
    if grads.shape[0] < 2:
        raise ValueError(
            f"grads has {grads.shape[0]} task(s); aggregation combines at least two tasks' gradients "
            f"(with one task, step along its gradient)"
        )
    bad = (~torch.isfinite(grads)).any(dim=1).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"the gradient(s) of task row(s) {bad} contain nan or inf; check those tasks' losses "
            f"(a nan target, a log of 0) or lower the learning rate"
        )
    return grads


def gram_matrix(grads: torch.Tensor) -> torch.Tensor:
    """G = grads gradsᵀ, G_ij = g_i · g_j: (T, P) -> (T, T) float64 on the CPU, computed in float64
    whatever the gradients' precision."""
    grads = check_grads(grads).double()
    return (grads @ grads.T).cpu()


def gradient_cosines(grads: torch.Tensor) -> torch.Tensor:
    """cos(g_i, g_j) = g_i · g_j / (‖g_i‖ ‖g_j‖): (T, P) -> (T, T), 1 on the diagonal.

    A negative entry is a conflict. A zero gradient has cosine 0 with every other gradient.
    """
    return _cosines(gram_matrix(grads))


def _cosines(gram: torch.Tensor) -> torch.Tensor:
    norms = gram.diagonal().clamp_min(0).sqrt()
    cosines = gram / (norms[:, None] * norms[None, :]).clamp_min(torch.finfo(gram.dtype).tiny)
    return cosines.fill_diagonal_(1.0)


def _check_gram(gram: torch.Tensor) -> np.ndarray:
    """The Gram matrix as a float64 array, rescaled so that its mean diagonal is 1.

    A Gram matrix G_ij = g_i · g_j is symmetric and positive semi-definite; anything else is not
    made of dot products (a sign or index slip) and is rejected. Every aggregator's weights are
    unchanged when all gradients are scaled by the same factor, so the rescaling only keeps the
    solvers' tolerances independent of the gradients' magnitude.
    """
    if not isinstance(gram, torch.Tensor):
        raise TypeError(f"gram must be a (T, T) tensor, got {type(gram).__name__}; build it with gram_matrix(grads)")
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] < 2:
        raise ValueError(f"gram must be a (T, T) matrix with T >= 2, got {tuple(gram.shape)}")
    matrix = gram.detach().double().cpu().numpy()
    if not np.isfinite(matrix).all():
        raise ValueError("the Gram matrix contains nan or inf: some task gradient is not finite")
    size = np.abs(matrix).max()
    asymmetry = np.abs(matrix - matrix.T).max()
    if asymmetry > 1e-6 * size:
        raise ValueError(
            f"gram is not symmetric (max |G_ij - G_ji| = {asymmetry:.3g}), so it is not a Gram matrix "
            f"G_ij = g_i · g_j; build it with gram_matrix(grads) from the (T, P) task gradients"
        )
    matrix = (matrix + matrix.T) / 2
    lowest = np.linalg.eigvalsh(matrix)[0]
    if lowest < -1e-6 * size:
        raise ValueError(
            f"gram has a negative eigenvalue ({lowest:.3g}), so it is not a Gram matrix of dot products "
            f"(those are positive semi-definite); build it with gram_matrix(grads)"
        )
    scale = np.trace(matrix) / len(matrix)
    return matrix / scale if scale > 0 else matrix


def _solve_bordered(gram: np.ndarray, rhs: np.ndarray, total: float) -> np.ndarray:
    """w solving [[G, 1], [1ᵀ, 0]] [w; ν] = [rhs; total]: the KKT system of a problem on the affine
    set Σ w = total. Least squares when the points are (numerically) affinely dependent."""
    size = len(gram)
    system = np.ones((size + 1, size + 1))
    system[:size, :size], system[size, size] = gram, 0.0
    right = np.append(rhs, total)
    try:
        solution = np.linalg.solve(system, right)
    except np.linalg.LinAlgError:
        solution = None
    if solution is None or not np.isfinite(solution).all() or np.abs(system @ solution - right).max() > 1e-9:
        solution = np.linalg.lstsq(system, right, rcond=None)[0]
    return solution[:size]


def _affine_minimiser(gram: np.ndarray) -> np.ndarray:
    """argmin_w wᵀ G w subject to Σ w = 1 (signs free): the point of the affine hull of the points
    closest to 0, from its KKT system G w = ν 1, Σ w = 1."""
    return _solve_bordered(gram, np.zeros(len(gram)), 1.0)


def _min_norm_weights(gram: np.ndarray, tol: float = 1e-13) -> tuple[np.ndarray, list[int]]:
    """argmin_{w in simplex} wᵀ G w exactly, by Wolfe's (1976) min-norm-point algorithm: (w (T,), support).

    G (T, T) is the Gram matrix of points p_t; x = Σ_S w_t p_t lives on a *corral* S of affinely
    independent points. Each major step adds the point j with the smallest p_j · x; the minor steps
    move x to the affine minimiser of S, dropping points whose weight would turn negative. It stops
    when ‖x‖² - min_j p_j · x ≤ tol × max_t G_tt: half the Frank-Wolfe gap, an upper bound on the
    distance to the optimum, so the answer is exact up to rounding. Finite; for T ≤ 10 a handful of
    steps of (T + 1)-sized linear solves.
    """
    limit = tol * max(float(np.diag(gram).max()), np.finfo(float).tiny)
    support, weights = [int(np.argmin(np.diag(gram)))], np.ones(1)
    for _ in range(50 * len(gram)):
        dots = gram[:, support] @ weights  # p_j · x for every j
        j = int(np.argmin(dots))
        if weights @ dots[support] - dots[j] <= limit or j in support:
            break
        support, weights = support + [j], np.append(weights, 0.0)
        while True:
            affine = _affine_minimiser(gram[np.ix_(support, support)])
            if (affine > 0).all():
                weights = affine
                break
            falling = np.flatnonzero(affine <= 0)  # move towards affine until the first weight hits 0
            ratios = weights[falling] / np.maximum(weights[falling] - affine[falling], 1e-300)
            step = ratios.min()
            if step <= 0:  # the point just added cannot enter: x is optimal up to rounding
                support, weights = support[:-1], weights[:-1]
                break
            weights = weights + step * (affine - weights)
            keep = weights > 1e-15
            keep[falling[np.argmin(ratios)]] = False
            support, weights = [s for s, k in zip(support, keep) if k], weights[keep] / weights[keep].sum()
    return _spread(weights, support, len(gram)), support


def _spread(weights: np.ndarray, support: list[int], size: int) -> np.ndarray:
    """The corral's weights as a (T,) vector on the simplex (0 off the support)."""
    full = np.zeros(size)
    full[support] = weights / weights.sum()
    return full


def _cagrad_inner_weights(matrix: np.ndarray, radius: float, tol: float = 1e-12) -> np.ndarray:
    """CAGrad's w = argmin_{w in simplex} F(w) = g_wᵀ g0 + radius ‖g_w‖ exactly, for radius > 0.

    With κ = radius / ‖g_w‖ at the optimum, w is also the minimiser of the quadratic
    g_wᵀ g0 + κ ‖g_w‖² / 2, i.e. the min-norm point of the points κ g_t + g0 (Wolfe's algorithm,
    exact), and h(κ) = κ ‖g_w(κ)‖ is non-decreasing in κ: we solve h(κ) = radius. On a fixed corral S,
    w(κ) = w₀ + v / κ (two linear solves), so h(κ)² is a quadratic in κ with a closed-form root; that
    Newton-like step, safeguarded by bisection on log κ, finds the optimal S in a few steps. Accepted
    when the Frank-Wolfe gap of F is ≤ tol (F is convex; the Gram matrix is scaled to a mean
    diagonal of 1).
    """
    size = len(matrix)
    mean_dots = matrix.mean(axis=1)  # b_t = g_t · g0
    g0_squared = float(mean_dots.mean())

    def gap(w: np.ndarray) -> float:
        gw_norm = math.sqrt(max(w @ matrix @ w, 0.0))
        if gw_norm <= 1e-15:
            return math.inf
        gradient = mean_dots + radius * (matrix @ w) / gw_norm
        return float(w @ gradient - gradient.min())

    low, high, kappa, best, best_gap = 0.0, math.inf, 1.0, None, math.inf
    for _ in range(200):
        shifted = (kappa**2 * matrix + kappa * (mean_dots[:, None] + mean_dots[None, :]) + g0_squared) / (1 + kappa) ** 2
        w, support = _min_norm_weights(shifted)
        if best is None or gap(w) < best_gap:
            best, best_gap = w, gap(w)
        h = kappa * math.sqrt(max(w @ matrix @ w, 0.0))
        low, high = (kappa, high) if h < radius else (low, kappa)
        sub = matrix[np.ix_(support, support)]  # the corral's closed form: w(κ) = w0 + v / κ
        w0 = _affine_minimiser(sub)
        v = _solve_bordered(sub, -mean_dots[support], 0.0)
        a, b, c = w0 @ sub @ w0, w0 @ sub @ v, v @ sub @ v  # h(κ)² = a κ² + 2 b κ + c
        discriminant = b * b - a * (c - radius**2)
        step = (-b + math.sqrt(discriminant)) / a if a > 1e-15 and discriminant >= 0 else math.nan
        if step > 0:
            candidate = np.zeros(size)
            candidate[support] = w0 + v / step
            if candidate.min() >= -1e-12:
                candidate = np.maximum(candidate, 0.0)
                candidate /= candidate.sum()
                if gap(candidate) < best_gap:
                    best, best_gap = candidate, gap(candidate)
        if best_gap <= tol:
            return best
        if low < step < high:
            kappa = step
        elif math.isinf(high):
            kappa *= 4.0
            if kappa > 1e15:  # h never reaches the radius: 0 is in the hull, F's minimum is at g_w = 0
                return best
        else:
            kappa = math.sqrt(low * high) if low > 0 else high / 4.0
            if high - low <= 1e-15 * high:
                return best
    return best


def pcgrad_weights(gram: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """PCGrad's d = Σ_i g_i' written as Σ_t α_t g_t: gram (T, T) -> α (T,) float64.

    Yu et al. 2020, "Gradient surgery for multi-task learning", Algorithm 1: for each task i, in a
    random order of the other tasks j, if g_i' · g_j < 0 then g_i' ← g_i' - (g_i' · g_j / ‖g_j‖²) g_j,
    starting from g_i' = g_i. Every g_i' stays a combination c_i of the original gradients, so the
    projections only need dot products: g_i' · g_j = c_iᵀ G e_j. generator: the random order.
    """
    matrix = _check_gram(gram)
    num_tasks = len(matrix)
    coefficients = np.eye(num_tasks)  # row i: g_i' as a combination of the original g_t
    for i in range(num_tasks):
        others = [j for j in range(num_tasks) if j != i]
        for position in torch.randperm(num_tasks - 1, generator=generator).tolist():
            j = others[position]
            dot = coefficients[i] @ matrix[:, j]  # g_i' · g_j
            if dot < 0 and matrix[j, j] > 0:
                coefficients[i, j] -= dot / matrix[j, j]
    return torch.from_numpy(coefficients.sum(axis=0))


def mgda_weights(gram: torch.Tensor) -> torch.Tensor:
    """MGDA's min-norm weights: argmin_{w in simplex} ‖Σ_t w_t g_t‖² = wᵀ G w; gram (T, T) -> w (T,) float64.

    Sener & Koltun 2018, "Multi-task learning as multi-objective optimization". Two tasks have the
    closed form w_1 = clip((g_2 - g_1)·g_2 / ‖g_1 - g_2‖², 0, 1) (their Algorithm 1); more tasks are
    solved exactly by Wolfe's min-norm-point algorithm (``_min_norm_weights``; Sener & Koltun use an
    iterative Frank-Wolfe solver instead, which can stop short of the minimum).
    """
    matrix = _check_gram(gram)
    if len(matrix) == 2:
        gap = matrix[0, 0] + matrix[1, 1] - 2 * matrix[0, 1]  # ‖g_1 - g_2‖²
        w1 = 0.5 if gap <= 1e-12 else float(np.clip((matrix[1, 1] - matrix[0, 1]) / gap, 0.0, 1.0))
        return torch.tensor([w1, 1.0 - w1], dtype=torch.float64)
    return torch.from_numpy(_min_norm_weights(matrix)[0])


def cagrad_weights(gram: torch.Tensor, c: float = 0.5) -> torch.Tensor:
    """CAGrad's d = g0 + (c‖g0‖ / ‖g_w‖) g_w as Σ_t α_t g_t: gram (T, T) -> α (T,) float64.

    Liu et al. 2021, "Conflict-averse gradient descent for multi-task learning", Algorithm 1:
    g0 = (1/T) Σ_t g_t is the average gradient; w minimises g_wᵀ g0 + c‖g0‖ ‖g_w‖ over the simplex
    (g_w = Σ_t w_t g_t), so α_t = 1/T + c‖g0‖ w_t / ‖g_w‖. c ≥ 0 is the radius of the ball around
    g0 in which d may turn (c = 0: plain average). The inner problem is solved exactly
    (``_cagrad_inner_weights``; the authors call scipy's SLSQP). No rescaling: the authors' code
    optionally divides d by 1 + c² (its ``rescale``); we return d as the algorithm defines it.
    When 0 is in the convex hull and no w with g_w ≠ 0 is better, d = g0.
    """
    if not (math.isfinite(c) and c >= 0):
        raise ValueError(f"c must be finite and >= 0, got {c!r}")
    matrix = _check_gram(gram)
    num_tasks = len(matrix)
    alpha = np.full(num_tasks, 1.0 / num_tasks)
    radius = c * math.sqrt(max(matrix.mean(), 0.0))  # c‖g0‖, ‖g0‖² = mean of G
    if radius <= 0:
        return torch.from_numpy(alpha)
    w = _cagrad_inner_weights(matrix, radius)
    gw_norm = math.sqrt(max(w @ matrix @ w, 0.0))
    if gw_norm > 1e-12:
        alpha += radius * w / gw_norm
    return torch.from_numpy(alpha)


def _combine(weights: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Σ_t α_t g_t: α (T,), grads (T, P) -> (P,) in the dtype of grads."""
    return (weights.to(grads.device, torch.float64) @ grads.double()).to(grads.dtype)


def pcgrad(grads: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """PCGrad (Yu et al. 2020): the SUM of the projected task gradients; grads (T, P) -> (P,).

    Gradients without conflicts are left alone, so then the result is Σ_t g_t (see ``pcgrad_weights``).
    """
    return _combine(pcgrad_weights(gram_matrix(grads), generator), grads)


def mgda(grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MGDA (Sener & Koltun 2018): (direction (P,), weights (T,)) of the min-norm point of the
    convex hull of the rows of grads (T, P). A zero direction means a Pareto-stationary point."""
    weights = mgda_weights(gram_matrix(grads))
    return _combine(weights, grads), weights.to(grads.dtype)


def cagrad(grads: torch.Tensor, c: float = 0.5) -> torch.Tensor:
    """CAGrad (Liu et al. 2021): d = g0 + (c‖g0‖ / ‖g_w‖) g_w, not rescaled; grads (T, P) -> (P,)."""
    return _combine(cagrad_weights(gram_matrix(grads), c), grads)


def equal_weighting(grads: torch.Tensor) -> torch.Tensor:
    """Equal weighting's direction Σ_t g_t, the gradient of Σ_t L_t; grads (T, P) -> (P,)."""
    return check_grads(grads).sum(dim=0)


AGGREGATORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "equal": equal_weighting,
    "pcgrad": pcgrad,
    "mgda": lambda grads: mgda(grads)[0],
    "cagrad": cagrad,
}
"""Name -> direction function grads (T, P) -> (P,), so a notebook can loop over the methods."""


class GradientAggregation:
    """The training loop's seam (``train(..., weighting=GradientAggregation(model, "pcgrad"))``)
    for aggregators: it computes the per-task gradients itself and writes ``.grad``.

    model: a ``HardSharingModel`` (a ``trunk`` shared by all tasks, one ``heads[task]`` per task).
    method: ``"equal"`` (α_t = 1: plain Σ_t L_t, through this machinery, to measure conflicts),
    ``"pcgrad"``, ``"mgda"``, ``"cagrad"``.
    mode:
      ``"parameters"``: g_t = ∇_θ L_t over the trunk's trainable parameters θ, one backward pass per
      task; the trunk gets d = Σ_t α_t g_t.
      ``"representation"``: g_t = Σ_b ∂L_t/∂z_b (H,), the gradient of a shift added to every
      example's shared features z_b (a bias on the trunk's output). The weights α come from these
      cheap gradients (one backward through the heads per task), then Σ_t α_t ∂L_t/∂z runs back
      through the trunk once (after MGDA-UB, Sener & Koltun 2018). Why the shift and not the
      flattened (B, H) gradient: in a mixed batch each task sees its own examples, its rows of
      ∂L_t/∂z are zero elsewhere, so flattened gradients of different tasks never overlap and
      would always look orthogonal.
    Either way each head keeps the gradient of its own loss. ``cosine_curve(a, b)`` gives the cosine
    between two tasks' gradients at every step, ``norm_curve(t)`` the length ‖g_t‖ = √G_tt; ``weights``
    returned to the loop are the α_t.
    c: CAGrad's radius (method "cagrad" only); seed: PCGrad's random projection order.
    Data-parallel, ``train`` calls it with ``reduce`` (``weighting.Reduce``: a (T, P) tensor -> its mean
    over the ranks, the same on every rank): the task gradients are averaged before the Gram matrix,
    so every rank computes the same α and takes the same step. None (one process): used as they are.
    """

    writes_gradients = True

    def __init__(self, model: nn.Module, method: str, mode: str = "parameters", c: float = 0.5, seed: int = 0) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; methods are: {', '.join(METHODS)}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; modes are: {', '.join(MODES)}")
        trunk, heads = getattr(model, "trunk", None), getattr(model, "heads", None)
        if not (isinstance(trunk, nn.Module) and isinstance(heads, nn.ModuleDict)):
            raise TypeError(
                f"GradientAggregation needs a model with a shared .trunk and per-task .heads "
                f"(a HardSharingModel), got {type(model).__name__}"
            )
        self.model, self.method, self.mode, self.c = model, method, mode, c
        self.generator = torch.Generator().manual_seed(seed)
        self._records: list[tuple[int, tuple[str, ...], torch.Tensor, torch.Tensor]] = []  # (step, tasks, cosines, norms)
        self._features: torch.Tensor | None = None
        self._hook = model.trunk.register_forward_hook(self._capture) if mode == "representation" else None

    def _capture(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._features = output

    def remove(self) -> None:
        """Stop capturing the trunk's output (representation mode), e.g. once training is over;
        ``cosine_curve`` still works, further steps in representation mode do not."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = self._features = None

    def _weights(self, gram: torch.Tensor) -> torch.Tensor:
        if self.method == "pcgrad":
            return pcgrad_weights(gram, self.generator)
        if self.method == "mgda":
            return mgda_weights(gram)
        if self.method == "cagrad":
            return cagrad_weights(gram, self.c)
        return torch.ones(len(gram), dtype=torch.float64)

    def __call__(
        self, losses: dict[str, torch.Tensor], step: int = 0,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, **ctx: Any,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        tasks = tuple(losses)
        unknown = [task for task in tasks if task not in self.model.heads]
        if unknown:
            raise ValueError(
                f"GradientAggregation got a loss for task(s) {', '.join(map(repr, unknown))}, which the "
                f"model it was built for has no head for; its heads are: {', '.join(self.model.heads)}"
            )
        shared = [p for p in self.model.trunk.parameters() if p.requires_grad]
        if self.mode == "representation":
            if self._features is None or not self._features.requires_grad:
                raise RuntimeError(
                    "no shared features with a gradient were captured: run the model's forward in "
                    "training (not under torch.no_grad) before calling GradientAggregation"
                )
            targets = [self._features]
        else:
            targets = shared
        rows = []
        for k, (task, loss) in enumerate(losses.items()):
            head = [p for p in self.model.heads[task].parameters() if p.requires_grad]
            keep_graph = self.mode == "representation" or k < len(losses) - 1
            grads = torch.autograd.grad(loss, targets + head, retain_graph=keep_graph, allow_unused=True)
            for parameter, grad in zip(head, grads[len(targets):]):
                parameter.grad = grad
            rows.append([torch.zeros_like(t) if g is None else g for t, g in zip(targets, grads[: len(targets)])])
        if self.mode == "representation":
            per_example = torch.stack([row[0] for row in rows])  # (T, B, H)
            flat = per_example.sum(dim=1)  # (T, H): the gradients of a shift of the features
        else:
            flat = torch.stack([torch.cat([g.flatten() for g in row]) for row in rows])  # (T, P)
        if reduce is not None:
            flat = reduce(flat)  # the whole batch's task gradients under data parallelism
        bad = [task for task, row in zip(tasks, flat) if not bool(torch.isfinite(row).all())]
        if bad:
            raise FloatingPointError(
                f"the gradient of task(s) {', '.join(bad)} contains nan or inf at step {step}; "
                f"try a smaller lr, or check those tasks' inputs and targets"
            )
        gram = (flat.double() @ flat.double().T).cpu()  # float64, as gram_matrix (which needs T >= 2)
        weights = self._weights(gram) if len(tasks) > 1 else torch.ones(1, dtype=torch.float64)
        self._records.append((step, tasks, _cosines(gram), gram.diagonal().clamp_min(0).sqrt()))
        alpha = weights.to(flat.device, flat.dtype)
        if self.mode == "representation":
            self._features.backward((alpha[:, None, None] * per_example).sum(dim=0))
        else:
            direction = alpha @ flat
            for parameter, chunk in zip(shared, direction.split([p.numel() for p in shared])):
                parameter.grad = chunk.view_as(parameter)
        total = sum(float(a) * loss.detach() for a, loss in zip(weights, losses.values()))
        return total, {task: float(a) for task, a in zip(tasks, weights)}

    def cosine_curve(self, task_a: str, task_b: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, cos(g_a, g_b)) at the steps where both tasks had a loss: two (K,) arrays."""
        steps, values = [], []
        for step, tasks, cosines, _ in self._records:
            if task_a in tasks and task_b in tasks:
                steps.append(step)
                values.append(float(cosines[tasks.index(task_a), tasks.index(task_b)]))
        if not steps:
            raise ValueError(f"no step had gradients of both {task_a!r} and {task_b!r}")
        return np.array(steps), np.array(values)

    def norm_curve(self, task: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, ‖g_task‖) at the steps where the task had a loss: two (K,) arrays (the gradient at the
        trunk's parameters or of the feature shift, as ``mode`` says; before the weights α are applied)."""
        steps, values = [], []
        for step, tasks, _, norms in self._records:
            if task in tasks:
                steps.append(step)
                values.append(float(norms[tasks.index(task)]))
        if not steps:
            raise ValueError(f"no step had a gradient of task {task!r}")
        return np.array(steps), np.array(values)
