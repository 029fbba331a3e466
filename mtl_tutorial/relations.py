"""Task relations: which task's training helps which other task, measured while training (the article's §3.1.3).

Fifty et al. 2021, "Efficiently identifying task groupings for multi-task learning" (NeurIPS):
the lookahead affinity of task i on task j compares task j's loss before and after one step of the
shared parameters θ_s on task i's loss alone,

    Z_{i→j} = 1 − L_j(θ_s − η ∇_{θ_s} L_i, θ_j) / L_j(θ_s, θ_j),

with task j's own parameters θ_j (its head) left as they are. Z_{i→j} > 0: a step for i lowers j's
loss too (i helps j); < 0: it raises it. Averaged over training, Z is a T × T matrix: row i is the
task stepped on, column j the task measured; the diagonal Z_{i→i} is a task's own progress.

Next to it, the cosine of the shared gradients, cos(∇_{θ_s} L_i, ∇_{θ_s} L_j), from
``aggregation.gradient_cosines``. To first order in η, L_j(θ_s − η g_i) ≈ L_j − η g_i·g_j, so

    Z_{i→j} ≈ η g_i·g_j / L_j = η ‖g_i‖ ‖g_j‖ cos(g_i, g_j) / L_j :

the same sign as the cosine for a small step, but scaled by the gradient norms and j's loss, so
a task with large gradients affects others more; and Z is not symmetric while the cosine is.

The step. TAG takes the lookahead with the optimizer that trains the model. Pass that optimizer
(``optimizer=``, e.g. the Adam that ``train`` gets as ``optimizer=``) and the stepped θ_s is what
one ``optimizer.step()`` on task i's gradient alone would give, from a copy of the optimizer's state
(Adam: its moments and step count; the real state is not touched); without it, a plain SGD step
θ_s − η ∇L_i of size ``lr``. The two are different steps: an SGD step of η = 1 against Adam's
lr · m̂ / (√v̂ + ε) at lr = 1e-3, so they can rank partners differently.

How it differs from the paper: TAG computes Z at every training step on that step's batch.
``TaskAffinity`` runs as (part of) ``train``'s ``eval_fn`` every ``eval_every`` steps, on a fresh
random batch of each task's training data; the model's parameters are never changed (the lookahead
is a ``torch.func.functional_call`` with the stepped parameters). Two conventions differ from TAG's code
(google-research/tag, e.g. ``celeba/CelebA.ipynb``), so its numbers and ours are not comparable as is:

- *scale*: TAG's code divides by the learning rate, (1 − L_after / L_before) / η, a rate per unit
  step; our Z is not divided, so TAG's value is ours / η (ours ≈ η g_i·g_j / L_j, theirs ≈ g_i·g_j / L_j).
  Dividing by η changes no sign and, at one η, no ranking; it matters when values at different η, or
  TAG's published values, are set next to ours.
- *mode*: as ``train``'s ``eval_fn``, ``TaskAffinity`` sees the model in eval mode (``train`` calls
  ``model.eval()`` first; ``lookahead_affinity`` keeps whatever mode the model is in), so dropout is
  off and batch norm uses its running statistics in both losses. TAG's code runs the lookahead in
  train mode (``training=True``), so dropout noise and batch statistics enter its losses.

Whether a predicted partner really helps is then a paired comparison over seeds
(``mtl_tutorial.evidence``). Layout: the argument checks, the lookahead step (SGD or the optimizer's),
the one-batch affinity, the tracker for ``train``, reading the matrices back from a ``History``.
"""

from __future__ import annotations

import copy
import math
import numbers
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from mtl_tutorial.aggregation import gradient_cosines
from mtl_tutorial.checks import check_batch_size, check_task_data
from mtl_tutorial.models import select_examples
from mtl_tutorial.objectives import check_scalar_losses

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_lr(lr: Any) -> None:
    if not isinstance(lr, numbers.Real) or isinstance(lr, bool):
        raise TypeError(f"lr (the lookahead step η) must be a number, got {type(lr).__name__} {lr!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr (the lookahead step η) must be > 0, got {lr!r}")


def _check_step(lr: Any, optimizer: Any) -> None:
    """Exactly one lookahead: an SGD step of size ``lr`` or the ``optimizer``'s own step."""
    if optimizer is None:
        if lr is None:
            raise ValueError("give the lookahead step: lr=η for a plain SGD step, or optimizer= the optimizer that "
                             "trains the model (TAG's choice: the step training takes)")
        _check_lr(lr)
        return
    if lr is not None:
        raise ValueError(f"give lr (an SGD lookahead) or optimizer (its own step, at its own learning rate), not both; "
                         f"got lr={lr!r} and a {type(optimizer).__name__}: drop lr")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer (the one that trains the model), got "
                        f"{type(optimizer).__name__}")


def optimizer_lookahead(optimizer: torch.optim.Optimizer, parameters: Sequence[torch.Tensor],
                        grads: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
    """What one ``optimizer.step()`` would make of ``parameters`` with gradients ``grads``, as new tensors.

    The step runs on copies of the parameters with a copy of the optimizer's state for them (Adam: the
    moments m, v and the step count; with no state yet, a first step) and each parameter's group
    settings (lr, betas, weight decay): the optimizer and the parameters are left unchanged. A None
    gradient leaves its parameter where it is, as ``step()`` does. parameters: P tensors that
    ``optimizer`` trains; grads: P tensors of the same shapes (or None).
    """
    if len(parameters) != len(grads):
        raise ValueError(f"give one gradient per parameter: {len(parameters)} parameters, {len(grads)} gradients")
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    missing = [i for i, p in enumerate(parameters) if id(p) not in group_of]
    if missing:
        raise ValueError(f"the optimizer does not train {len(missing)} of the {len(parameters)} shared parameters "
                         f"(e.g. one of shape {tuple(parameters[missing[0]].shape)}); pass the optimizer that trains "
                         f"this model, the one given to train(optimizer=...)")
    copies = [p.detach().clone().requires_grad_(True) for p in parameters]
    groups = [{**{k: v for k, v in group_of[id(p)].items() if k != "params"}, "params": [c]}
              for p, c in zip(parameters, copies)]
    shadow = type(optimizer)(groups, **optimizer.defaults)
    for p, c, g in zip(parameters, copies, grads):
        if p in optimizer.state:
            shadow.state[c] = copy.deepcopy(optimizer.state[p])
        c.grad = None if g is None else g.detach().clone()
    shadow.step()
    return [c.detach() for c in copies]


def _check_pairs(what: str, pairs: Any) -> dict[str, int]:
    """task -> N_t of a dict {task: (inputs, targets)} of at least 2 tasks (a list [inputs, targets] is a pair too)."""
    if not isinstance(pairs, Mapping):
        raise TypeError(f"{what} must be a dict task -> (inputs, targets), got {type(pairs).__name__}")
    if len(pairs) < 2:
        raise ValueError(f"affinity relates at least 2 tasks, got {len(pairs)}: {', '.join(map(str, pairs))}")
    sizes = {}
    for task, pair in pairs.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(
                f"{what}[{task!r}] must be an (inputs, targets) pair, got {type(pair).__name__}; "
                f"e.g. {{{task!r}: (x, y)}}"
            )
        sizes[task] = check_task_data(task, tuple(pair))
    return sizes


def _check_loss_fns(loss_fns: Any, tasks: Sequence[str]) -> None:
    if not isinstance(loss_fns, Mapping):
        raise TypeError(
            f"loss_fns must be a dict task -> loss function, got {type(loss_fns).__name__}; "
            f"e.g. dict.fromkeys(tasks, nn.functional.cross_entropy)"
        )
    missing = [t for t in tasks if t not in loss_fns]
    if missing:
        raise ValueError(f"no loss function for task(s) {', '.join(missing)}; loss_fns has: {', '.join(loss_fns)}")
    for task in tasks:
        if not callable(loss_fns[task]):
            raise TypeError(
                f"the loss of task {task!r} must be a function (outputs, targets) -> loss, got {loss_fns[task]!r}"
            )


def _check_shared(shared: Any) -> list[str]:
    """The name prefixes of the shared parameters: one string or a non-empty list of them, none empty."""
    prefixes = list(shared) if isinstance(shared, Iterable) and not isinstance(shared, str) else [shared]
    if not all(isinstance(prefix, str) for prefix in prefixes):
        raise TypeError(f"shared must be a parameter-name prefix or a list of them, got {shared!r}; e.g. 'trunk.'")
    if not prefixes or "" in prefixes:
        raise ValueError(
            f"shared must name the shared parameters by non-empty prefixes, got {shared!r}; an empty prefix would "
            f"count every parameter, heads included, as shared. E.g. 'trunk.' or ['trunk.0.', 'trunk.2.']"
        )
    return prefixes


def shared_parameter_names(model: nn.Module, shared: str | Sequence[str] = ("trunk.",)) -> list[str]:
    """Names of the trainable parameters whose name starts with one of ``shared`` (default: the trunk's)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    prefixes = _check_shared(shared)
    names = [n for n, p in model.named_parameters() if p.requires_grad and any(n.startswith(s) for s in prefixes)]
    if not names:
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        raise ValueError(
            f"no trainable parameter starts with {', '.join(map(repr, prefixes))}; affinity needs shared "
            f"parameters (a trunk that trains, e.g. an mlp on frozen features, not nn.Identity). "
            f"Trainable parameters: {', '.join(trainable[:8]) or 'none'}"
        )
    return names


def lookahead_affinity(
    model: nn.Module,
    batches: Mapping[str, tuple[Any, torch.Tensor]],
    loss_fns: Mapping[str, LossFunction],
    lr: float | None = None,
    shared: str | Sequence[str] = ("trunk.",),
    optimizer: torch.optim.Optimizer | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lookahead affinity Z and shared-gradient cosines on one batch per task: two (T, T) float64 tensors.

    batches: task -> (inputs (B_t, ...), targets (B_t, ...)); loss_fns: task -> loss. The step: lr, η
    of an SGD lookahead, Z[i, j] = 1 − L_j(θ_s − η ∇L_i) / L_j(θ_s); or optimizer, the one training
    uses, Z[i, j] = 1 − L_j(θ_s after its step on ∇L_i alone) / L_j(θ_s) (``optimizer_lookahead``).
    Rows and columns in the order of ``batches``. The model and the optimizer are left unchanged.
    Gradients are computed even under ``torch.no_grad``.
    """
    _check_step(lr, optimizer)
    _check_pairs("batches", batches)
    tasks = list(batches)
    _check_loss_fns(loss_fns, tasks)
    names = shared_parameter_names(model, shared)
    params = dict(model.named_parameters())
    with torch.enable_grad():
        losses = {t: loss_fns[t](model(x, t), y) for t, (x, y) in batches.items()}
        check_scalar_losses(losses)
        for t, loss in losses.items():
            value = float(loss.detach())
            if not (math.isfinite(value) and value > 0):
                raise ValueError(
                    f"the loss of task {t!r} is {value} on this batch, so Z_(i→{t}) = 1 − L_after / L_before "
                    f"is undefined; the lookahead affinity needs finite losses > 0 (a task whose loss is already 0 "
                    f"has no progress to measure)"
                )
        found = {t: torch.autograd.grad(losses[t], [params[n] for n in names], allow_unused=True) for t in tasks}
    grads = {t: [torch.zeros_like(params[n]) if g is None else g for n, g in zip(names, found[t])] for t in tasks}
    affinity = torch.zeros(len(tasks), len(tasks), dtype=torch.float64)
    with torch.no_grad():
        for i, source in enumerate(tasks):
            if optimizer is None:
                stepped = {n: params[n] - lr * g for n, g in zip(names, grads[source])}
            else:
                stepped = dict(zip(names, optimizer_lookahead(optimizer, [params[n] for n in names], found[source])))
            for j, target in enumerate(tasks):
                x, y = batches[target]
                after = loss_fns[target](functional_call(model, stepped, (x, target)), y)
                affinity[i, j] = 1.0 - float(after) / float(losses[target])
    flat = torch.stack([torch.cat([g.flatten() for g in grads[t]]) for t in tasks])
    return affinity, gradient_cosines(flat)


def affinity_metric_name(kind: str, source: str, target: str) -> str:
    """History metric name: ``affinity/<i>-><j>`` (Z_{i→j}) or ``cosine/<i>-><j>``."""
    if kind not in ("affinity", "cosine"):
        raise ValueError(f"kind must be 'affinity' or 'cosine', got {kind!r}")
    return f"{kind}/{source}->{target}"


class TaskAffinity:
    """An ``eval_fn`` part that measures Z and the gradient cosines on fresh training batches.

    data: task -> (inputs, targets) of the training data; every call draws ``batch_size`` random
    examples per task (``seed``: same seed, same draws) and returns
    {``affinity_metric_name(kind, i, j)``: value}, which ``train`` records in ``History.metrics``:

        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        affinity = TaskAffinity(train_data, loss_fns, optimizer=optimizer)   # or lr=η: an SGD lookahead
        history = train(model, loader, loss_fns, num_steps, optimizer=optimizer, eval_fn=affinity, eval_every=10)
        Z = affinity_matrix(history, tasks)        # (T, T), averaged over training
    """

    def __init__(
        self, data: Mapping[str, tuple[Any, torch.Tensor]], loss_fns: Mapping[str, LossFunction], lr: float | None = None,
        batch_size: int = 64, shared: str | Sequence[str] = ("trunk.",), seed: int = 0,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        self.sizes = _check_pairs("data", data)
        _check_loss_fns(loss_fns, list(data))
        _check_step(lr, optimizer)
        check_batch_size(batch_size)
        _check_shared(shared)
        if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
        self.data, self.loss_fns, self.lr, self.batch_size, self.shared = data, loss_fns, lr, batch_size, shared
        self.optimizer = optimizer
        self.generator = torch.Generator().manual_seed(int(seed))

    def __call__(self, model: nn.Module) -> dict[str, float]:
        device = model.get_parameter(shared_parameter_names(model, self.shared)[0]).device
        batches = {}
        for task, (inputs, targets) in self.data.items():
            positions = torch.randperm(self.sizes[task], generator=self.generator)[: self.batch_size]
            x = select_examples(inputs, positions)
            x = x.to(device) if isinstance(x, torch.Tensor) else x
            batches[task] = (x, torch.as_tensor(targets)[positions].to(device))
        affinity, cosines = lookahead_affinity(model, batches, self.loss_fns, self.lr, self.shared, self.optimizer)
        tasks = list(batches)
        return {affinity_metric_name(kind, s, t): float(matrix[i, j])
                for kind, matrix in (("affinity", affinity), ("cosine", cosines))
                for i, s in enumerate(tasks) for j, t in enumerate(tasks)}


def affinity_matrix(history: Any, tasks: Sequence[str], kind: str = "affinity", start: int = 0) -> np.ndarray:
    """The mean over evaluations (from eval step ``start`` on) of Z_{i→j} (or the cosines): (T, T).

    history: what ``train`` returns (a ``training.History``), read through its ``eval_steps`` (J,) and
    ``metrics`` {name: (J,) values}; any object with those two works (this module does not import the loop).
    """
    if not (hasattr(history, "eval_steps") and isinstance(getattr(history, "metrics", None), Mapping)):
        raise TypeError(f"history must be the History that train() returns, got {type(history).__name__}")
    if isinstance(tasks, str) or not isinstance(tasks, Iterable):
        raise TypeError(f"tasks must be a list of task names, got {type(tasks).__name__} {tasks!r}; e.g. ['a', 'b']")
    tasks = list(tasks)
    if not tasks or len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks must be a non-empty list of distinct task names, got {list(tasks)}")
    if not isinstance(start, int) or isinstance(start, bool):
        raise TypeError(f"start must be an int (an eval step), got {type(start).__name__} {start!r}")
    if not any(step >= start for step in history.eval_steps):
        where = (f"its last evaluation is at step {history.eval_steps[-1]}; lower start" if history.eval_steps
                 else "it has none; train with eval_fn=TaskAffinity(...)")
        raise ValueError(f"the history has no evaluation at step >= start = {start}: {where}")
    matrix = np.zeros((len(tasks), len(tasks)))
    for i, source in enumerate(tasks):
        for j, target in enumerate(tasks):
            name = affinity_metric_name(kind, source, target)
            if name not in history.metrics:
                raise ValueError(f"the history has no metric {name!r}; train with eval_fn=TaskAffinity(...)")
            values = np.array(history.metrics[name])[np.array(history.eval_steps) >= start]
            matrix[i, j] = np.nanmean(values)
    return matrix
