"""Loss weighting strategies: Σ_t λ_t L_t with task weights λ_t that may change during training.

Every strategy has the training loop's interface (``training.Weighting``): it is built from the
task names, ``Strategy(tasks, ...)``, and called each step with that step's task losses,

    total, weights = strategy({task: L_t}, step=step, model=model)

returning the loss to back-propagate and the current λ_t, which ``train`` records in the History.
A strategy with learnable parameters is an ``nn.Module``; ``train`` optimises them with the model,
at the strategy's own ``lr`` when it sets one. Data-parallel, ``train`` also hands in ``reduce``
(``Reduce``), the mean over the ranks, for what a strategy computes from its rank's examples alone.

    EqualWeighting         λ_t = 1
    StaticWeighting        λ_t fixed by hand
    UncertaintyWeighting   λ_t = e^(-s_t) / 2, s_t learned (Kendall, Gal & Cipolla 2018)
    GradNorm               λ_t learned so that gradient norms follow training rates (Chen et al. 2018)
    DynamicWeightAverage   λ_t from the rate of descent of each loss (Liu, Johns & Davison 2019)
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from mtl_tutorial.objectives import check_scalar_losses, weighted_sum

Reduce = Callable[[torch.Tensor], torch.Tensor]
"""``reduce(x) -> (1/W) Σ_r x_r``: a tensor of any shape (here (T, P)) -> its mean over the W data-parallel
ranks, the same shape and the same values on every rank. ``train`` passes ``distributed.all_reduce_mean``;
in one process (and by default, ``None``) it is the identity."""


class LossWeighting(nn.Module):
    """What every strategy shares: the task names, a check of the losses, an optional ``lr``.

    lr: learning rate of the strategy's own parameters (None: the model's). Subclasses implement
    ``forward(losses, **ctx) -> (total 0-dim tensor, {task: λ_t})`` for the tasks present in losses
    (a batch may lack some tasks).
    """

    lr: float | None = None

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        if isinstance(tasks, str) or not tasks:
            raise ValueError(f"tasks must be a non-empty list of task names, got {tasks!r}")
        if len(set(tasks)) != len(tasks) or not all(isinstance(task, str) for task in tasks):
            raise ValueError(f"tasks must be distinct strings, got {list(tasks)!r}")
        self.tasks = tuple(tasks)

    def _check(self, losses: Mapping[str, torch.Tensor]) -> None:
        check_scalar_losses(losses)
        unknown = [task for task in losses if task not in self.tasks]
        if unknown:
            raise ValueError(f"unknown task(s) {', '.join(map(repr, unknown))}; tasks are: {', '.join(self.tasks)}")


class EqualWeighting(LossWeighting):
    """λ_t = 1: the plain sum Σ_t L_t, the baseline every other strategy is compared with."""

    def forward(self, losses: dict[str, torch.Tensor], **ctx: Any) -> tuple[torch.Tensor, dict[str, float]]:
        self._check(losses)
        return weighted_sum(losses), dict.fromkeys(losses, 1.0)


class StaticWeighting(LossWeighting):
    """λ_t fixed for the whole run: ``StaticWeighting({"sentiment": 2.0, "pos": 0.5})``; the keys are the tasks."""

    def __init__(self, weights: Mapping[str, float]) -> None:
        super().__init__(list(weights))
        weighted_sum(dict.fromkeys(weights, torch.zeros(())), weights)  # finite, >= 0
        self.weights = {task: float(weight) for task, weight in weights.items()}

    def forward(self, losses: dict[str, torch.Tensor], **ctx: Any) -> tuple[torch.Tensor, dict[str, float]]:
        self._check(losses)
        weights = {task: self.weights[task] for task in losses}
        return weighted_sum(losses, weights), weights


class UncertaintyWeighting(LossWeighting):
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla 2018, eq. 7 with s_t = log σ_t²):

        L = Σ_t e^(-s_t) L_t / 2 + s_t / 2,    λ_t = e^(-s_t) / 2.

    Each s_t is learned with the model, starting at 0 (λ_t = 1/2; LibMTL starts at s_t = -0.5,
    λ_t ≈ 0.82). For fixed L_t the minimum over s_t is at e^(s_t) = L_t, i.e. σ_t² = L_t: a task
    with a large loss gets a small weight, and the s_t / 2 term keeps the weights from collapsing to 0.
    """

    def __init__(self, tasks: Sequence[str], lr: float | None = None) -> None:
        super().__init__(tasks)
        self.lr = lr
        self.log_variances = nn.Parameter(torch.zeros(len(self.tasks)))  # s_t = log σ_t²

    def forward(self, losses: dict[str, torch.Tensor], **ctx: Any) -> tuple[torch.Tensor, dict[str, float]]:
        self._check(losses)
        total, weights = torch.zeros((), device=self.log_variances.device), {}
        for task, loss in losses.items():
            s = self.log_variances[self.tasks.index(task)]
            total = total + torch.exp(-s) * loss / 2 + s / 2
            weights[task] = float(torch.exp(-s.detach()) / 2)
        return total, weights


def last_shared_weight(model: nn.Module, losses: Mapping[str, torch.Tensor]) -> nn.Parameter:
    """GradNorm's W: the weight of the last trainable ``nn.Linear`` of ``model.trunk`` that the task
    losses reach (a non-zero gradient of Σ_t L_t).

    For an MLP trunk, its output layer; for a BERT trunk with mean pooling, the output projection of
    the top transformer layer, not BERT's pooler, which is registered later but never used.
    """
    trunk = getattr(model, "trunk", None)
    if not isinstance(trunk, nn.Module):
        raise TypeError(
            f"cannot find the shared layer of a {type(model).__name__}: it has no .trunk; "
            f"pass GradNorm(tasks, shared_parameters=[...]) with the shared weights to use"
        )
    linears = [m.weight for m in trunk.modules() if isinstance(m, nn.Linear) and m.weight.requires_grad]
    if not linears:
        raise ValueError("the trunk has no trainable nn.Linear layer; pass GradNorm(tasks, shared_parameters=[...])")
    total = sum(losses.values())
    grads = torch.autograd.grad(total, linears, retain_graph=True, allow_unused=True)
    reached = [w for w, g in zip(linears, grads) if g is not None and bool(g.abs().max() > 0)]
    if not reached:
        raise ValueError(
            "the task losses reach none of the trunk's trainable nn.Linear layers (every gradient is "
            "zero); check that the heads use the trunk's output, or pass GradNorm(tasks, shared_parameters=[...])"
        )
    return reached[-1]


class GradNorm(LossWeighting):
    """GradNorm (Chen, Badrinarayanan, Lee & Rabinovich 2018): weights that balance training rates.

    λ = T · softmax(θ), so the weights stay positive and sum to T (as LibMTL; the paper instead takes
    a gradient step on the λ_t themselves and renormalises them to sum to T). Each step, with W the
    shared weights (default: ``last_shared_weight``, chosen at the first step: the last shared layer
    that the losses reach, closest to the heads, as in the paper: its gradients are cheap to get,
    one short backward pass per task, and they still measure how hard each task pulls on the
    shared representation):

        G_t = ‖∇_W λ_t L_t‖,   Ḡ = mean_t G_t,   r_t = (L_t / L_t(0)) / mean_s (L_s / L_s(0)),
        L_grad = Σ_t |G_t - Ḡ r_t^α|    (Ḡ r_t^α held constant).

    L_grad is minimised with respect to θ only (its gradient is written to θ.grad, which the
    training loop's optimizer then applies); the model is trained on Σ_t λ_t L_t with λ held
    constant. A task whose loss fell less than the others (r_t > 1, the slower task) gets a larger
    target norm, so its weight grows. α: how strongly (0 pulls all norms to be equal).
    Data-parallel, ∇_W L_t is averaged over the ranks first, by the ``reduce`` that ``train`` passes
    (``Reduce``; None: one process, nothing to average).
    L_t(0) is the first loss seen for task t; it must be > 0. A step where every G_t is 0 (W not
    reached by any loss) raises: the weights could not move.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        alpha: float = 1.5,
        shared_parameters: Iterable[nn.Parameter] | None = None,
        lr: float | None = None,
    ) -> None:
        super().__init__(tasks)
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be finite and >= 0, got {alpha!r}")
        self.alpha, self.lr = alpha, lr
        self.shared_parameters = list(shared_parameters) if shared_parameters is not None else None
        self.logits = nn.Parameter(torch.zeros(len(self.tasks)))  # θ; λ = T softmax(θ)
        self.initial_losses: dict[str, float] = {}

    def task_weights(self) -> torch.Tensor:
        """λ = T · softmax(θ), (T,) in the order of ``tasks``."""
        return len(self.tasks) * torch.softmax(self.logits, dim=0)

    def forward(
        self, losses: dict[str, torch.Tensor], model: nn.Module | None = None, reduce: Reduce | None = None,
        **ctx: Any,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        self._check(losses)
        if self.shared_parameters is None:
            if model is None:
                raise ValueError("GradNorm needs the model (train() passes it) or shared_parameters=[...]")
            self.shared_parameters = [last_shared_weight(model, losses)]
        for task, loss in losses.items():
            first = self.initial_losses.setdefault(task, float(loss.detach()))
            if not first > 0:
                raise ValueError(
                    f"GradNorm needs positive losses: the first loss of task {task!r} is {first!r}, so its "
                    f"training rate L_t / L_t(0) is undefined; use a loss that is > 0 until the task is "
                    f"learned (cross-entropy, MSE), or another weighting for this task"
                )
        positions = [self.tasks.index(task) for task in losses]
        weights = self.task_weights()[positions]  # (T_present,), depends on θ
        rows = []
        for loss in losses.values():
            grads = torch.autograd.grad(loss, self.shared_parameters, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(torch.zeros_like(w) if g is None else g).flatten()
                                   for w, g in zip(self.shared_parameters, grads)]))
        task_grads = torch.stack(rows)  # (T_present, |W|)
        if reduce is not None:  # ∇_W L_t of the whole batch: the mean over the data-parallel ranks
            task_grads = reduce(task_grads)
        grad_norms = weights * task_grads.norm(dim=1)  # G_t
        if not bool(grad_norms.detach().abs().max() > 0):
            raise ValueError(
                "every task's gradient norm at GradNorm's shared weights W is 0, so the task weights "
                "cannot move; pass GradNorm(tasks, shared_parameters=[...]) with shared weights that the "
                "task losses reach (e.g. the trunk's last layer before the heads)"
            )
        ratios = torch.tensor(
            [float(loss.detach()) / self.initial_losses[task] for task, loss in losses.items()],
            device=grad_norms.device,
        )
        targets = (grad_norms.mean() * (ratios / ratios.mean()) ** self.alpha).detach()
        gap = (grad_norms - targets).abs().sum()
        (self.logits.grad,) = torch.autograd.grad(gap, self.logits)
        constant = weights.detach()
        total = sum(w * loss for w, loss in zip(constant, losses.values()))
        return total, {task: float(w) for task, w in zip(losses, constant)}


class DynamicWeightAverage(LossWeighting):
    """Dynamic Weight Average (Liu, Johns & Davison 2019, eq. 4), over windows of ``window`` steps:

        λ_t(k) = T · softmax_t(w_t(k-1) / temperature),   w_t(k-1) = L̄_t(k-1) / L̄_t(k-2),

    L̄_t(k) the mean loss of task t over window k (the paper uses epochs: set window to the steps
    of one epoch). A task whose loss fell less in the last window (larger w_t) gets more weight.
    λ_t = 1 until two windows are complete. The weights always sum to T.
    """

    def __init__(self, tasks: Sequence[str], window: int = 50, temperature: float = 2.0) -> None:
        super().__init__(tasks)
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive number of steps, got {window!r}")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
        self.window, self.temperature = window, temperature
        self.window_means: list[torch.Tensor] = []  # one (T,) per complete window, nan for absent tasks
        self._sums = torch.zeros(len(self.tasks), dtype=torch.float64)
        self._counts = torch.zeros(len(self.tasks), dtype=torch.float64)
        self._current = 0

    def current_weights(self) -> torch.Tensor:
        """λ (T,) from the last two complete windows; ones before there are two."""
        if len(self.window_means) < 2:
            return torch.ones(len(self.tasks), dtype=torch.float64)
        rates = self.window_means[-1] / self.window_means[-2]
        rates = torch.where(torch.isfinite(rates), rates, torch.ones_like(rates))  # absent task: rate 1
        return len(self.tasks) * torch.softmax(rates / self.temperature, dim=0)

    def forward(
        self, losses: dict[str, torch.Tensor], step: int | None = None, **ctx: Any
    ) -> tuple[torch.Tensor, dict[str, float]]:
        self._check(losses)
        if step is None or step < 1:
            raise ValueError(f"DynamicWeightAverage needs the 1-based step (train() passes it), got {step!r}")
        window = (step - 1) // self.window
        while self._current < window:  # close the finished window(s)
            self.window_means.append(self._sums / self._counts)  # 0/0 = nan for a task never seen
            self._sums, self._counts = torch.zeros_like(self._sums), torch.zeros_like(self._counts)
            self._current += 1
        lambdas = self.current_weights()
        weights = {task: float(lambdas[self.tasks.index(task)]) for task in losses}
        for task, loss in losses.items():
            self._sums[self.tasks.index(task)] += float(loss.detach())
            self._counts[self.tasks.index(task)] += 1
        return weighted_sum(losses, weights), weights
