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
import statistics
import time
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from mtl_tutorial.backbone import load_backbone
from mtl_tutorial.data import (
    MultiTaskBatch, MultiTaskBatchSampler, MultiTaskDataset, collate_multitask, load_text_tasks,
)
from mtl_tutorial.models import HardSharingModel, TextEncoderTrunk, train_top_layers
from mtl_tutorial.runtime import seed_everything
from mtl_tutorial.training import LossFunction, train

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
    """G = grads gradsᵀ, G_ij = g_i · g_j: (T, P) -> (T, T) float64 on the CPU."""
    grads = check_grads(grads)
    return (grads @ grads.T).double().cpu()


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

    Every aggregator's weights are unchanged when all gradients are scaled by the same factor, so
    the rescaling only keeps the solvers' step sizes independent of the gradients' magnitude.
    """
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] < 2:
        raise ValueError(f"gram must be a (T, T) matrix with T >= 2, got {tuple(gram.shape)}")
    matrix = gram.detach().double().cpu().numpy()
    if not np.isfinite(matrix).all():
        raise ValueError("the Gram matrix contains nan or inf: some task gradient is not finite")
    scale = np.trace(matrix) / len(matrix)
    return matrix / scale if scale > 0 else matrix


def _project_to_simplex(v: np.ndarray) -> np.ndarray:
    """The point of the simplex {w ≥ 0, Σ w = 1} closest to v (Duchi et al. 2008, sort-based)."""
    u = np.sort(v)[::-1]
    cumulative = np.cumsum(u) - 1.0
    rho = np.nonzero(u - cumulative / np.arange(1, len(v) + 1) > 0)[0][-1]
    return np.maximum(v - cumulative[rho] / (rho + 1), 0.0)


def _minimise_on_simplex(
    objective: Callable[[np.ndarray], tuple[float, np.ndarray]],
    num_tasks: int,
    max_iter: int = 250,
    tol: float = 1e-8,
) -> np.ndarray:
    """min_w f(w) over the simplex for a convex f: accelerated projected gradient descent (FISTA,
    Beck & Teboulle 2009) with backtracking and restarts.

    objective(w) -> (f(w), ∇f(w)); starts at the centre w = 1/T. Each step projects y - step ∇f(y)
    onto the simplex, halving the step until f(w⁺) ≤ f(y) + ∇f(y)·(w⁺ - y) + ‖w⁺ - y‖² / (2 step);
    momentum restarts whenever f goes up. Stops when the Frank-Wolfe gap ∇f(w)·w - min_t ∇f(w)_t,
    an upper bound on f(w) - min f, is below tol (the Gram matrix is scaled to a mean diagonal of 1),
    or after max_iter steps (250, as Sener & Koltun's min-norm solver; typical problems need ~40).
    """
    w = np.full(num_tasks, 1.0 / num_tasks)
    value, gradient = objective(w)
    y, y_value, y_gradient, momentum, step = w, value, gradient, 1.0, 1.0
    for _ in range(max_iter):
        if gradient @ w - gradient.min() <= tol:
            break
        while True:
            candidate = _project_to_simplex(y - step * y_gradient)
            move = candidate - y
            new_value, new_gradient = objective(candidate)
            if new_value <= y_value + y_gradient @ move + (move @ move) / (2 * step) + 1e-15 or step < 1e-12:
                break
            step /= 2
        if new_value > value:  # momentum overshot: restart from w (from w itself, f cannot rise)
            if momentum == 1.0:
                break
            y, y_value, y_gradient, momentum = w, value, gradient, 1.0
            continue
        next_momentum = (1 + math.sqrt(1 + 4 * momentum**2)) / 2
        y = candidate + (momentum - 1) / next_momentum * (candidate - w)
        w, value, gradient, momentum = candidate, new_value, new_gradient, next_momentum
        y_value, y_gradient = objective(y)
    return w


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
    closed form w_1 = clip((g_2 - g_1)·g_2 / ‖g_1 - g_2‖², 0, 1) (their Algorithm 1); more tasks use
    projected gradient descent on the simplex (the problem is a convex quadratic program).
    """
    matrix = _check_gram(gram)
    if len(matrix) == 2:
        gap = matrix[0, 0] + matrix[1, 1] - 2 * matrix[0, 1]  # ‖g_1 - g_2‖²
        w1 = 0.5 if gap <= 1e-12 else float(np.clip((matrix[1, 1] - matrix[0, 1]) / gap, 0.0, 1.0))
        return torch.tensor([w1, 1.0 - w1], dtype=torch.float64)
    return torch.from_numpy(_minimise_on_simplex(lambda w: (w @ matrix @ w, 2 * matrix @ w), len(matrix)))


def cagrad_weights(gram: torch.Tensor, c: float = 0.5) -> torch.Tensor:
    """CAGrad's d = g0 + (c‖g0‖ / ‖g_w‖) g_w as Σ_t α_t g_t: gram (T, T) -> α (T,) float64.

    Liu et al. 2021, "Conflict-averse gradient descent for multi-task learning", Algorithm 1:
    g0 = (1/T) Σ_t g_t is the average gradient; w minimises g_wᵀ g0 + c‖g0‖ ‖g_w‖ over the simplex
    (g_w = Σ_t w_t g_t), so α_t = 1/T + c‖g0‖ w_t / ‖g_w‖. c ≥ 0 is the radius of the ball around
    g0 in which d may turn (c = 0: plain average). No rescaling: the authors' code optionally
    divides d by 1 + c² (its ``rescale``); we return d as the algorithm defines it.
    """
    if not (math.isfinite(c) and c >= 0):
        raise ValueError(f"c must be finite and >= 0, got {c!r}")
    matrix = _check_gram(gram)
    num_tasks = len(matrix)
    mean_dots = matrix.mean(axis=1)  # g_t · g0
    g0_norm = math.sqrt(max(mean_dots.mean(), 0.0))
    radius = c * g0_norm

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        gw_norm = math.sqrt(max(w @ matrix @ w, 0.0))
        gradient = mean_dots + (radius * (matrix @ w) / gw_norm if gw_norm > 1e-12 else 0.0)
        return w @ mean_dots + radius * gw_norm, gradient

    w = _cagrad_two_tasks(matrix, mean_dots, radius) if num_tasks == 2 else _minimise_on_simplex(objective, num_tasks)
    gw_norm = math.sqrt(max(w @ matrix @ w, 0.0))
    alpha = np.full(num_tasks, 1.0 / num_tasks)
    if gw_norm > 1e-12:
        alpha += radius * w / gw_norm
    return torch.from_numpy(alpha)


def _cagrad_two_tasks(matrix: np.ndarray, mean_dots: np.ndarray, radius: float) -> np.ndarray:
    """CAGrad's w for two tasks in closed form. With w = (a, 1 - a), g_w = g_2 + a δ, δ = g_1 - g_2:

        F(a) = a δ·g0 + radius √q(a),   q(a) = A a² + 2B a + C,   A = ‖δ‖², B = δ·g_2, C = ‖g_2‖².

    F'(a) = 0 at u = A a + B with u √A / √(u² + D) = r, r = -δ·g0 / radius, D = AC - B² ≥ 0, so
    u = sign(r) √(r² D / (A - r²)) when r² < A. F is convex: the best of that point (clipped to
    [0, 1]) and the two ends is the minimum.
    """
    A = matrix[0, 0] + matrix[1, 1] - 2 * matrix[0, 1]
    B, C = matrix[0, 1] - matrix[1, 1], matrix[1, 1]
    slope = mean_dots[0] - mean_dots[1]  # δ·g0
    candidates = [0.0, 1.0]
    if A > 1e-12 and radius > 0:
        r, D = -slope / radius, max(A * C - B * B, 0.0)
        if r * r < A:
            u = math.copysign(math.sqrt(r * r * D / (A - r * r)), r)
            candidates.append(min(max((u - B) / A, 0.0), 1.0))

    def value(a: float) -> float:
        return a * slope + radius * math.sqrt(max(A * a * a + 2 * B * a + C, 0.0))

    a = min(candidates, key=value)
    return np.array([a, 1.0 - a])


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
    between two tasks' gradients at every step; ``weights`` returned to the loop are the α_t.
    c: CAGrad's radius (method "cagrad" only); seed: PCGrad's random projection order.
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
        self._records: list[tuple[int, tuple[str, ...], torch.Tensor]] = []  # (step, tasks, cosines)
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
        self, losses: dict[str, torch.Tensor], step: int = 0, **ctx: Any
    ) -> tuple[torch.Tensor, dict[str, float]]:
        tasks = tuple(losses)
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
        bad = [task for task, row in zip(tasks, flat) if not bool(torch.isfinite(row).all())]
        if bad:
            raise FloatingPointError(
                f"the gradient of task(s) {', '.join(bad)} contains nan or inf at step {step}; "
                f"try a smaller lr, or check those tasks' inputs and targets"
            )
        gram = (flat @ flat.T).double().cpu()
        weights = self._weights(gram) if len(tasks) > 1 else torch.ones(1, dtype=torch.float64)
        self._records.append((step, tasks, _cosines(gram)))
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
        for step, tasks, cosines in self._records:
            if task_a in tasks and task_b in tasks:
                steps.append(step)
                values.append(float(cosines[tasks.index(task_a), tasks.index(task_b)]))
        if not steps:
            raise ValueError(f"no step had gradients of both {task_a!r} and {task_b!r}")
        return np.array(steps), np.array(values)


def aggregator_step_times(
    model: nn.Module,
    batch: MultiTaskBatch,
    loss_fns: Mapping[str, LossFunction],
    methods: tuple[str, ...] = ("pcgrad", "mgda", "cagrad"),
    modes: tuple[str, ...] = MODES,
    num_steps: int = 3,
    repeats: int = 3,
    lr: float = 1e-4,
) -> dict[str, dict[str, float]]:
    """Seconds per training step of each aggregator and mode, relative to equal weighting.

    Every configuration trains ``model`` with ``training.train`` for ``num_steps`` steps on the same
    ``batch`` (a ``MultiTaskBatch``; mixed, so that every task has a loss), ``repeats`` times, the
    configurations taking turns so that a machine that gets busier slows them all alike; one
    untimed round warms up first. Returns ``{"equal": ..., "pcgrad/parameters": ..., ...}``, each
    ``{"seconds": median seconds per step, "ratio": seconds / equal's seconds}``.
    """
    if num_steps < 1 or repeats < 1:
        raise ValueError(f"num_steps and repeats must be >= 1, got {num_steps} and {repeats}")
    configurations: dict[str, tuple[str, str] | None] = {"equal": None}
    configurations |= {f"{method}/{mode}": (method, mode) for mode in modes for method in methods}
    times: dict[str, list[float]] = {name: [] for name in configurations}
    for round_ in range(repeats + 1):
        for name, configuration in configurations.items():
            weighting = GradientAggregation(model, *configuration) if configuration else None
            start = time.perf_counter()
            train(model, [batch], loss_fns, num_steps=num_steps, lr=lr, weighting=weighting, progress=False)
            if round_ > 0:
                times[name].append((time.perf_counter() - start) / num_steps)
            if weighting is not None:
                weighting.remove()
    equal = statistics.median(times["equal"])
    return {name: {"seconds": statistics.median(t), "ratio": statistics.median(t) / equal} for name, t in times.items()}


def text_benchmark_setup(
    top_layers: int = 2, batch_size: int = 32, max_length: int = 64, seed: int = 0
) -> tuple[HardSharingModel, MultiTaskBatch, dict[str, LossFunction]]:
    """The model and batch of ``mtl-tutorial bench``: (model, batch, loss_fns) for ``aggregator_step_times``.

    The shipped MiniLM as trunk with its top ``top_layers`` transformer layers trainable, a linear
    head per shipped text task, and one mixed batch of ``batch_size`` training texts drawn
    uniformly over the tasks (tokenised to at most ``max_length`` tokens).
    """
    seed_everything(seed)
    tasks = load_text_tasks(split="train")
    encoder, tokenizer = load_backbone()
    heads = {name: nn.Linear(encoder.config.hidden_size, task.num_classes) for name, task in tasks.items()}
    model = HardSharingModel(TextEncoderTrunk(train_top_layers(encoder, top_layers), tokenizer, max_length), heads)
    dataset = MultiTaskDataset({name: (task.texts, task.labels) for name, task in tasks.items()})
    indices = next(iter(MultiTaskBatchSampler(dataset, batch_size, strategy="uniform", mixed=True, seed=seed)))
    batch = collate_multitask([dataset[i] for i in indices])
    return model, batch, {name: nn.functional.cross_entropy for name in tasks}


def step_time_table(times: Mapping[str, Mapping[str, float]], num_tasks: int) -> str:
    """The result of ``aggregator_step_times`` as text, one line per configuration, with the targets:
    at most T + 0.5 times equal weighting per parameter, at most 1.5 times per representation."""
    targets = {"parameters": num_tasks + 0.5, "representation": 1.5}
    lines = [f"{'configuration':<24}{'ms/step':>10}{'× equal':>10}{'target':>9}"]
    for name, entry in times.items():
        mode = name.split("/")[1] if "/" in name else None
        target = f"≤ {targets[mode]:.1f}" if mode else ""
        lines.append(f"{name:<24}{entry['seconds'] * 1000:>10.1f}{entry['ratio']:>10.2f}{target:>9}")
    return "\n".join(lines)
