"""The one training loop of the course, its ``History``, and test-set evaluation.

One step: take a batch, run the model, compute each task's loss L_t on that task's examples,
let the *weighting* turn them into one number, back-propagate it, step the optimizer:

    total, task_weights = weighting({t: L_t}, step=step, model=model)     # default: Σ_t L_t
    total.backward(); optimizer.step()

The weighting is the seam later chapters plug into: any object with
``__call__(losses: dict[str, Tensor], **ctx) -> (total: Tensor, weights: dict[str, float])``
(static weights, uncertainty weighting, GradNorm, DWA: ``mtl_tutorial.weighting``). Gradients are
cleared before the weighting runs, so it may set gradients itself: GradNorm writes those of its own
weights; a gradient aggregator (PCGrad, MGDA, CAGrad: ``aggregation.GradientAggregation``) writes
every parameter's gradient and sets ``writes_gradients = True``, and the loop then skips
``total.backward()``.

Targets are checked per task before the loss (``check_targets``: one per output; class labels in
range for a classifier's logits), by ``train`` and ``evaluate`` alike.

``precision`` sets the forward pass's arithmetic: ``"fp32"`` (default), ``"bf16"`` (``torch.autocast``
to bfloat16, on CUDA or the CPU; float32's range, so no loss scaling) or ``"fp16"`` (float16
autocast with a ``GradScaler``, CUDA only). Parameters, optimizer and aggregators' Gram matrices
(float64) keep their precision. Launched by ``torchrun`` (a process group of W > 1 ranks), the
same ``train`` is data-parallel: each rank trains on its shard of every batch and one step equals
one step on the whole batch (``mtl_tutorial.distributed``: the math and what is averaged where);
the weighting is handed ``reduce``, the mean over the ranks (the identity in one process: ``Weighting``).
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterable, Iterator, Mapping, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mtl_tutorial import collectives
from mtl_tutorial.checks import check_batch_size, check_task_data
from mtl_tutorial.data.multitask import MultiTaskBatch
from mtl_tutorial.models import TaskOutput, select_examples
from mtl_tutorial.objectives import check_scalar_losses, weighted_sum
from mtl_tutorial.runtime import check_device

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(outputs (B_t, ...), targets (B_t, ...)) -> 0-dim loss."""

PRECISIONS = ("fp32", "bf16", "fp16")
"""``train(precision=...)``: float32; bfloat16 autocast; float16 autocast with a GradScaler (CUDA)."""


class Weighting(Protocol):
    """Turns per-task losses into the loss to back-propagate: ``(total, {task: λ_t})``.

    ctx holds ``step`` (1-based), ``model`` and ``reduce``; a weighting takes what it needs and ignores
    the rest. ``reduce(x)``: x (any shape, e.g. per-task gradients (T, P)) -> its mean over the
    data-parallel ranks, same shape, same on every rank (``collectives.all_reduce_mean``; the identity
    in one process): a weighting that computes something from this rank's examples alone (GradNorm's
    and the aggregators' per-task gradients) reduces it before use, so every rank agrees.
    An ``nn.Module`` weighting is moved to the device and its parameters are trained with the model
    (at its attribute ``lr`` when set). ``writes_gradients = True``: the weighting has written the
    gradients itself; ``total`` is then only recorded, not back-propagated.
    """

    def __call__(
        self, losses: dict[str, torch.Tensor], **ctx: Any
    ) -> tuple[torch.Tensor, dict[str, float]]: ...


@dataclass
class History:
    """What a run measured, step by step. Lists are aligned with ``steps`` / ``eval_steps``.

    losses[task][k]: L_t at steps[k] (nan when task t had no example in that batch);
    task_weights[task][k]: λ_t at steps[k] (nan likewise); total_loss[k]: the back-propagated loss;
    metrics[name][j]: metric ``name`` (e.g. ``"sentiment/accuracy"``) at eval_steps[j].
    """

    tasks: tuple[str, ...]
    steps: list[int] = field(default_factory=list)
    losses: dict[str, list[float]] = field(default_factory=dict)
    task_weights: dict[str, list[float]] = field(default_factory=dict)
    total_loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for task in self.tasks:
            self.losses.setdefault(task, [])
            self.task_weights.setdefault(task, [])

    def record_step(self, step: int, losses: Mapping[str, float], weights: Mapping[str, float], total: float) -> None:
        """Append one step; tasks absent from ``losses`` get nan."""
        self.steps.append(step)
        self.total_loss.append(total)
        for task in self.tasks:
            self.losses[task].append(losses.get(task, math.nan))
            self.task_weights[task].append(weights.get(task, math.nan))

    def record_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        """Append one evaluation; a metric missing from an evaluation gets nan there."""
        for name in metrics:
            self.metrics.setdefault(name, [math.nan] * len(self.eval_steps))
        self.eval_steps.append(step)
        for name, values in self.metrics.items():
            values.append(float(metrics.get(name, math.nan)))

    def extend(self, later: History) -> None:
        """Append a later run of the same tasks (a run continued in phases), its steps shifted to
        follow this run's last step: step s of ``later`` becomes ``steps[-1] + s``."""
        if later.tasks != self.tasks:
            raise ValueError(f"cannot join runs of different tasks: {self.tasks} and {later.tasks}")
        offset = self.steps[-1] if self.steps else 0
        for k, step in enumerate(later.steps):
            self.record_step(
                offset + step,
                {task: later.losses[task][k] for task in self.tasks},
                {task: later.task_weights[task][k] for task in self.tasks},
                later.total_loss[k],
            )
        for j, step in enumerate(later.eval_steps):
            self.record_eval(offset + step, {name: values[j] for name, values in later.metrics.items()})

    def loss_curve(self, task: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, losses) of one task at the steps where it trained: two (K,) arrays."""
        return self._curve(self.losses, task)

    def weight_curve(self, task: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, λ_t) of one task at the steps where it trained: two (K,) arrays."""
        return self._curve(self.task_weights, task)

    def _curve(self, table: dict[str, list[float]], task: str) -> tuple[np.ndarray, np.ndarray]:
        if task not in table:
            raise ValueError(f"unknown task {task!r}; tasks are: {', '.join(self.tasks)}")
        steps, values = np.array(self.steps), np.array(table[task], dtype=float)
        keep = ~np.isnan(values)
        return steps[keep], values[keep]

    def final_metrics(self) -> dict[str, float]:
        """The metrics of the last evaluation."""
        if not self.eval_steps:
            raise ValueError("no evaluation was recorded; pass eval_fn to train()")
        return {name: values[-1] for name, values in self.metrics.items()}

    def as_arrays(self) -> dict[str, np.ndarray]:
        """Flat name -> array view: ``step``, ``total_loss``, ``loss/<task>``, ``weight/<task>``,
        ``eval_step``, ``metric/<name>``."""
        arrays = {"step": np.array(self.steps), "total_loss": np.array(self.total_loss)}
        arrays |= {f"loss/{t}": np.array(v, dtype=float) for t, v in self.losses.items()}
        arrays |= {f"weight/{t}": np.array(v, dtype=float) for t, v in self.task_weights.items()}
        arrays["eval_step"] = np.array(self.eval_steps)
        arrays |= {f"metric/{n}": np.array(v, dtype=float) for n, v in self.metrics.items()}
        return arrays


class NonFiniteLossError(FloatingPointError):
    """Training met a nan or infinite loss. ``history`` holds every step completed before it.

    step: the step that failed; task: the first task whose loss was not finite (None when every
    task loss was finite but the weighted total was not); losses: that step's task losses.
    """

    def __init__(self, step: int, task: str | None, losses: dict[str, float], history: History) -> None:
        self.step, self.task, self.losses, self.history = step, task, losses, history
        values = ", ".join(f"{t}={v:.4g}" for t, v in losses.items())
        where = f"loss of task {task!r}" if task else "the weighted total loss"
        super().__init__(
            f"{where} is not finite at step {step} ({values}); training stopped. The {len(history.steps)} "
            f"steps before it are kept in error.history. Try a smaller lr, or check the inputs and targets."
        )


class _FixedWeights:
    """λ_t fixed for the whole run: given per task, or 1 for every task (``weights=None``)."""

    def __init__(self, tasks: tuple[str, ...], weights: Mapping[str, float] | None) -> None:
        if weights is not None:
            weighted_sum(dict.fromkeys(tasks, torch.zeros(())), weights)  # one valid weight per task
        self.weights = dict(weights) if weights is not None else dict.fromkeys(tasks, 1.0)

    def __call__(self, losses: dict[str, torch.Tensor], **ctx: Any) -> tuple[torch.Tensor, dict[str, float]]:
        weights = {task: self.weights[task] for task in losses}
        return weighted_sum(losses, weights), weights


def _endless(loader: Iterable[MultiTaskBatch]) -> Iterator[MultiTaskBatch]:
    """Iterate ``loader`` again and again (each pass is a new epoch)."""
    count = 0
    while True:
        empty = True
        for batch in loader:
            empty, count = False, count + 1
            yield batch
        if empty and count:
            raise ValueError(
                f"the loader was exhausted after {count} batches: it yields nothing when iterated again, "
                f"so train() cannot cycle over it; pass a re-iterable loader (a DataLoader or a list of "
                f"batches), not a generator"
            )
        if empty:
            raise ValueError("the loader yielded no batches")


def _is_integer(tensor: torch.Tensor) -> bool:
    return not (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool)


def check_class_labels(logits: torch.Tensor, labels: torch.Tensor, task: str | None = None) -> None:
    """Raise unless logits are (N, C) and labels (N,) integer class ids in 0..C-1."""
    of = f" of task {task!r}" if task else ""
    if logits.dim() != 2:
        raise ValueError(
            f"logits{of} must have shape (N, C), got {tuple(logits.shape)}; a class metric needs one "
            f"logit per class"
        )
    if labels.shape != logits.shape[:1]:
        squeeze = "; squeeze them: labels.squeeze(1)" if labels.shape == (len(logits), 1) else ""
        raise ValueError(
            f"labels{of} must have shape (N,) = ({len(logits)},) for logits of shape {tuple(logits.shape)}, "
            f"got {tuple(labels.shape)}{squeeze}"
        )
    if not _is_integer(labels):
        raise ValueError(f"labels{of} must be integer class ids, got {labels.dtype}; convert them: labels.long()")
    num_classes = logits.shape[1]
    outside = labels[(labels < 0) | (labels >= num_classes)]
    if len(outside):
        top = int(labels.max())
        per_class = f" ({top + 1} for labels up to {top})" if top >= num_classes else ""
        raise ValueError(
            f"label {int(outside[0])}{of} is outside the head's {num_classes} classes (0..{num_classes - 1}); "
            f"check that the labels belong to this task, or give the head one output per class{per_class}"
        )


def check_targets(task: str, outputs: torch.Tensor, targets: torch.Tensor) -> None:
    """Raise if ``targets`` cannot be the targets of ``outputs`` of task ``task`` (train and evaluate).

    Every task: one target per output, outputs (B, ...) and targets (B, ...). Classification,
    i.e. outputs (B, C) with C ≥ 2 and integer targets: targets (B,) in 0..C-1 (``check_class_labels``).
    Regression targets (floats) and single-logit heads (C = 1) are left to the loss function.
    """
    if not isinstance(outputs, torch.Tensor) or outputs.dim() == 0:
        return
    if len(targets) != len(outputs):
        raise ValueError(
            f"task {task!r} has {len(outputs)} outputs but {len(targets)} targets; the model must "
            f"return one output per example"
        )
    if outputs.dim() == 2 and outputs.shape[1] >= 2 and _is_integer(targets):
        check_class_labels(outputs, targets, task)


def _task_outputs(model: nn.Module, batch: MultiTaskBatch) -> dict[str, TaskOutput]:
    """Run ``model`` on a batch: task -> TaskOutput(outputs, positions), single-task or mixed."""
    if batch.is_single_task:
        return {batch.task: TaskOutput(model(batch.inputs, batch.task), torch.arange(len(batch.tasks)))}
    return model(batch.inputs, list(batch.tasks))


def _task_losses(
    model: nn.Module, batch: MultiTaskBatch, loss_fns: Mapping[str, LossFunction], device: torch.device
) -> dict[str, torch.Tensor]:
    """{task: L_t} of one batch, in the order of the tasks' first examples; the targets are checked first."""
    losses = {}
    for task, out in _task_outputs(model, batch).items():
        targets = batch.targets[out.positions.to(device)]
        check_targets(task, out.outputs, targets)
        losses[task] = loss_fns[task](out.outputs, targets)
    return losses


def _mixed_precision(
    precision: str, device: torch.device
) -> tuple[Callable[[], ContextManager], torch.amp.GradScaler | None]:
    """(a factory of the forward pass's autocast context, the GradScaler or None) for ``precision``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; precisions are: {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext, None
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(
            f"precision='fp16' needs a CUDA GPU (float16 autocast, with a GradScaler so that small gradients "
            f"do not underflow); on {device.type} use precision='bf16' (float32's range, no scaler) or 'fp32'"
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU has no bfloat16; use precision='fp16' (float16 with a GradScaler) or 'fp32'")
    if not torch.amp.is_autocast_available(device.type):
        raise ValueError(f"precision={precision!r}: torch has no autocast on {device.type}; use precision='fp32'")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    return functools.partial(torch.autocast, device.type, dtype=dtype), scaler


def frozen_submodules(model: nn.Module) -> list[nn.Module]:
    """The largest submodules of ``model`` that hold parameters, none of them trainable.

    A module with a trainable parameter anywhere below it (a LoRA-wrapped layer, the top layers of a
    partly frozen encoder) is not frozen; its frozen children are. Modules without parameters
    (dropout, activations) count only as part of a frozen parent.
    """
    parameters = list(model.parameters())
    if parameters and not any(p.requires_grad for p in parameters):
        return [model]
    return [module for child in model.children() for module in frozen_submodules(child)]


def train(
    model: nn.Module,
    loader: Iterable[MultiTaskBatch],
    loss_fns: Mapping[str, LossFunction],
    num_steps: int,
    lr: float = 1e-3,
    optimizer: torch.optim.Optimizer | None = None,
    weighting: Weighting | Mapping[str, float] | None = None,
    eval_fn: Callable[[nn.Module], Mapping[str, float]] | None = None,
    eval_every: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    desc: str = "training",
    precision: str = "fp32",
    frozen_modules: str = "eval",
) -> History:
    """Train ``model`` for ``num_steps`` batches of ``loader`` (cycled over epochs); returns a History.

    loss_fns: task -> loss function; its keys are the tasks. weighting: None (λ_t = 1), a dict of
    static task weights λ_t, or a ``Weighting``. optimizer: default Adam(lr) over the trainable
    parameters of the model and of the weighting, if it is an ``nn.Module`` (at ``weighting.lr``
    when that is set). eval_fn(model) ->
    {metric: value} runs under ``torch.no_grad`` in eval mode every ``eval_every`` steps and after
    the last step. A nan/inf loss raises ``NonFiniteLossError`` carrying the History so far.
    precision: ``PRECISIONS`` (module docstring). In a process group of W > 1 ranks (torchrun),
    each rank's loader yields its shard of every batch, the History holds the global losses on
    every rank, and only rank 0 shows the progress bar (``mtl_tutorial.distributed``).
    frozen_modules: "eval" runs every submodule whose parameters are all frozen as it will be
    evaluated (no dropout in a frozen encoder or its lower layers); "train" puts the whole model in
    training mode, the recipe of peft and transformers' Trainer for a frozen backbone under adapters,
    LoRA or prefixes (``showdown`` uses it).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if eval_every is not None and (eval_fn is None or eval_every < 1):
        raise ValueError("eval_every needs an eval_fn and must be >= 1")
    if frozen_modules not in ("eval", "train"):
        raise ValueError(f"frozen_modules must be 'eval' or 'train', got {frozen_modules!r}")
    frozen = frozen_submodules(model) if frozen_modules == "eval" else []
    tasks = tuple(loss_fns)
    device = check_device(device) if device is not None else next(model.parameters()).device
    autocast, scaler = _mixed_precision(precision, device)
    model.to(device)
    if weighting is None or isinstance(weighting, Mapping):
        weighting = _FixedWeights(tasks, weighting)
    if isinstance(weighting, nn.Module):
        weighting.to(device)
    if optimizer is None:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
        if isinstance(weighting, nn.Module):
            groups.append({"params": [p for p in weighting.parameters() if p.requires_grad],
                           "lr": getattr(weighting, "lr", None) or lr})
        optimizer = torch.optim.Adam([group for group in groups if group["params"]], lr=lr)
    writes_gradients = getattr(weighting, "writes_gradients", False)
    world = collectives.world_size()
    forward_model = collectives.data_parallel(model, device) if world > 1 else model
    own_parameters = [p for p in weighting.parameters() if p.requires_grad] if isinstance(weighting, nn.Module) else []
    collectives.broadcast_parameters(own_parameters)
    averaged_by_hand = own_parameters + ([p for p in model.parameters() if p.requires_grad] if writes_gradients else [])
    skip_sync = forward_model.no_sync if world > 1 and writes_gradients else contextlib.nullcontext

    history = History(tasks)
    batches = _endless(loader)
    bar = tqdm(range(1, num_steps + 1), desc=desc, disable=not progress or collectives.rank() != 0, leave=False)
    for step in bar:
        model.train()
        for module in frozen:
            module.eval()
        batch = next(batches).to(device)
        unknown = set(batch.tasks) - set(tasks)
        if unknown:
            raise ValueError(
                f"batch holds task(s) {', '.join(sorted(unknown))} with no loss function; "
                f"loss_fns has: {', '.join(tasks)}"
            )
        with skip_sync():
            with autocast():
                losses = _task_losses(forward_model, batch, loss_fns, device)
            check_scalar_losses(losses)
            if world > 1:
                losses, values = collectives.global_task_losses(losses, batch.tasks, tasks)
            else:
                values = {task: float(loss.detach()) for task, loss in losses.items()}
            bad = [task for task, value in values.items() if not math.isfinite(value)]
            if bad:
                raise NonFiniteLossError(step, bad[0], values, history)
            optimizer.zero_grad(set_to_none=True)
            total, task_weights = weighting(losses, step=step, model=model, reduce=collectives.all_reduce_mean)
            if not math.isfinite(float(total.detach())):
                raise NonFiniteLossError(step, None, values, history)
            if scaler is not None and any(p.grad is not None for g in optimizer.param_groups for p in g["params"]):
                raise ValueError(
                    "precision='fp16' multiplies the loss by a GradScaler's scale before backward and divides "
                    "every gradient by it afterwards, but this weighting wrote gradients itself (GradNorm, a "
                    "gradient aggregator), which would be divided too; use precision='bf16' or 'fp32'"
                )
            if not writes_gradients:
                (total if scaler is None else scaler.scale(total)).backward()
        collectives.average_gradients(averaged_by_hand)
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
            scaler.update()
        history.record_step(step, values, task_weights, float(total.detach()))
        if step % 10 == 0 or step == num_steps:
            bar.set_postfix(loss=f"{float(total.detach()):.4f}")
        if eval_fn is not None and ((eval_every and step % eval_every == 0) or step == num_steps):
            model.eval()
            with torch.no_grad():
                history.record_eval(step, eval_fn(model))
    model.eval()
    return history


def evaluate(
    model: nn.Module,
    data: Mapping[str, tuple[Any, torch.Tensor]],
    metrics: Mapping[str, LossFunction],
    batch_size: int = 256,
) -> dict[str, float]:
    """Metrics of ``model`` on held-out data: ``{"<task>/<metric>": value}``.

    data: task -> (inputs, targets), inputs a tensor (N, ...) or a list of N texts; metrics: name ->
    fn(outputs (N, ...), targets (N, ...)) -> 0-dim tensor, applied to every task. Runs in eval mode
    without gradients, ``batch_size`` examples at a time, on the model's device. The targets are
    checked as in training (``check_targets``); nan or inf outputs raise ``FloatingPointError``.
    """
    check_batch_size(batch_size)
    for task, pair in data.items():
        check_task_data(task, pair)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = {task: _predict(model, task, inputs, batch_size) for task, (inputs, _) in data.items()}
    finally:
        model.train(was_training)
    results = {}
    for task, (_, targets) in data.items():
        targets = torch.as_tensor(targets)
        check_targets(task, outputs[task], targets)
        non_finite = int((~torch.isfinite(outputs[task])).reshape(len(targets), -1).any(dim=1).sum())
        if non_finite:
            raise FloatingPointError(
                f"the model's outputs of task {task!r} are nan or inf for {non_finite} of {len(targets)} "
                f"examples; check the inputs for nan/inf and that training did not diverge"
            )
        for name, metric in metrics.items():
            results[f"{task}/{name}"] = float(metric(outputs[task], targets))
    return results


def _predict(model: nn.Module, task: str, inputs: Any, batch_size: int) -> torch.Tensor:
    """The model's outputs (N, ...) for N inputs of one task, ``batch_size`` at a time, on the CPU."""
    device = next(model.parameters()).device
    inputs = inputs.to(device) if isinstance(inputs, torch.Tensor) else inputs
    chunks = []
    for start in range(0, len(inputs), batch_size):
        positions = torch.arange(start, min(start + batch_size, len(inputs)))
        chunks.append(model(select_examples(inputs, positions), task).cpu())
    return torch.cat(chunks)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of examples whose arg-max class is the label. logits: (N, C); labels: (N,) in 0..C-1."""
    check_class_labels(logits, labels)
    return (logits.argmax(dim=-1) == labels).float().mean()


def macro_f1(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Unweighted mean over classes of F1 = 2·TP / (2·TP + FP + FN), over the classes that occur
    in the labels or the predictions. logits: (N, C); labels: (N,) in 0..C-1."""
    check_class_labels(logits, labels)
    predictions = logits.argmax(dim=-1)
    classes = torch.unique(torch.cat([labels, predictions]))
    scores = []
    for c in classes:
        tp = ((predictions == c) & (labels == c)).sum()
        fp = ((predictions == c) & (labels != c)).sum()
        fn = ((predictions != c) & (labels == c)).sum()
        scores.append(2 * tp / (2 * tp + fp + fn))
    return torch.stack(scores).float().mean()


def majority_class_accuracy(train_labels: torch.Tensor, test_labels: torch.Tensor) -> float:
    """Test accuracy of always predicting the most frequent *training* class (ties: the lowest id):
    the baseline a classifier has to beat. train_labels, test_labels: (N,) integer class ids."""
    for name, labels in (("train_labels", train_labels), ("test_labels", test_labels)):
        if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or len(labels) == 0 or not _is_integer(labels):
            raise ValueError(f"{name} must be a non-empty 1-d tensor of integer class ids, got "
                             f"{type(labels).__name__} {tuple(getattr(labels, 'shape', ()))}")
        if labels.min() < 0:
            raise ValueError(f"{name} holds negative class ids (min {labels.min().item()}); classes are 0..C-1")
    most_frequent = torch.bincount(train_labels).argmax()
    return float((test_labels == most_frequent).float().mean())


def mean_squared_error(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of (ŷ - y)² over all entries; predictions and targets of the same shape."""
    if predictions.shape != targets.shape:
        raise ValueError(
            f"predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} differ in shape; "
            f"squeeze the head's output, e.g. nn.Flatten(0) after nn.Linear(h, 1)"
        )
    return ((predictions - targets) ** 2).mean()


def normalized_mean_squared_error(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """MSE / Var(y): 0 is a perfect fit, 1 is no better than always predicting the mean of the targets.

    Comparable across tasks and seeds whose targets have different scales. predictions, targets: (N,).
    """
    return mean_squared_error(predictions, targets) / targets.var(unbiased=False)
