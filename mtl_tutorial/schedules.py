"""Training schedules: which tasks one step sees (the article's §4.2.2 joint and §4.2.1 alternating training).

    joint:        every step sees every task: the batch holds b examples of each task and the loop
                  back-propagates Σ_t λ_t L_t over all T tasks (one batch per task, summed)
    alternating:  one task per step, L = λ_t L_t: the tasks take turns (round robin), or each step's
                  task is drawn from p_t (``MultiTaskBatchSampler(replacement=True)``, T5-style)
    sequential:   task A alone for K_A steps, then task B alone, ...: no later step sees an earlier
                  task, so what B's steps do to A is catastrophic forgetting (McCloskey & Cohen, 1989),
                  forgetting_A = metric_A(end of A's phase) − metric_A(end of training)

Joint and alternating are loaders for the course's one loop (``training.train``); sequential runs
that loop once per task and joins the Histories. Per example they cost the same arithmetic: a joint
step processes T·b examples, an alternating step b (``bench.examples_per_second`` measures it).

Layout: ``ScheduleBatchSampler`` (joint / round robin) and ``schedule_loader`` (all three loaders),
then ``train_sequential`` and ``forgetting``.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Iterator, Mapping, NamedTuple

import numpy as np
from torch import nn
from torch.utils.data import DataLoader, Sampler

from mtl_tutorial.data.multitask import (
    MultiTaskBatch, MultiTaskBatchSampler, MultiTaskDataset, Strategy, TaskStreams, check_batch_size,
    check_num_batches, collate_multitask,
)
from mtl_tutorial.training import History, LossFunction, train

SCHEDULES = ("joint", "round_robin", "sampled")


class ScheduleBatchSampler(Sampler[list[int]]):
    """``num_batches`` batches per epoch of a ``MultiTaskDataset`` following a fixed schedule.

    ``"joint"``: every batch holds ``batch_size`` examples of *every* task, in task order
    (T·batch_size indices). ``"round_robin"``: batch k holds ``batch_size`` examples of task
    k mod T. Each task's examples come without replacement within a pass over that task and are
    reshuffled when it runs out (``TaskStreams``; passes continue across epochs). Same seed, same batches.
    """

    def __init__(self, dataset: MultiTaskDataset, schedule: str, batch_size: int, num_batches: int, seed: int = 0) -> None:
        if schedule not in ("joint", "round_robin"):
            raise ValueError(
                f"unknown schedule {schedule!r} for ScheduleBatchSampler; it has 'joint' and 'round_robin' "
                f"(for tasks drawn from p_t use MultiTaskBatchSampler(replacement=True))"
            )
        check_batch_size(batch_size)
        check_num_batches(num_batches)
        self.dataset, self.schedule, self.batch_size, self.num_batches = dataset, schedule, batch_size, num_batches
        self.streams = TaskStreams(dataset, np.random.default_rng(seed))
        self.step = 0  # batches yielded so far, over all epochs: round robin continues where it stopped

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        num_tasks = len(self.dataset.tasks)
        for _ in range(self.num_batches):
            if self.schedule == "joint":
                yield [index for t in range(num_tasks) for index in self.streams.take(t, self.batch_size)]
            else:
                yield self.streams.take(self.step % num_tasks, self.batch_size)
            self.step += 1


def schedule_loader(
    dataset: MultiTaskDataset,
    schedule: str,
    batch_size: int,
    num_batches: int,
    strategy: Strategy = "uniform",
    temperature: float = 2.0,
    seed: int = 0,
) -> DataLoader:
    """A loader of ``MultiTaskBatch``es for ``train``: ``num_batches`` batches per epoch.

    schedule: ``"joint"`` (b = batch_size examples of every task per batch), ``"round_robin"``
    (alternating, tasks take turns) or ``"sampled"`` (alternating, each batch's task drawn i.i.d.
    from p_t of ``strategy``/``temperature``). ``strategy`` and ``temperature`` are for "sampled" only.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; schedules are: {', '.join(SCHEDULES)}")
    if schedule == "sampled":
        sampler: Sampler = MultiTaskBatchSampler(
            dataset, batch_size, strategy, temperature, seed=seed, replacement=True, num_batches=num_batches
        )
    else:
        sampler = ScheduleBatchSampler(dataset, schedule, batch_size, num_batches, seed)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_multitask)


def train_sequential(
    model: nn.Module,
    loaders: Mapping[str, Iterable[MultiTaskBatch]],
    loss_fns: Mapping[str, LossFunction],
    steps_per_task: int | Mapping[str, int],
    **train_kwargs: Any,
) -> History:
    """Train on one task after another: ``loaders`` in order, task -> loader of that task's batches.

    Phase k runs ``train(model, loaders[task_k], loss_fns, steps)``; the History joins the phases
    with steps counted from the start of the first (phase k ends at the sum of the first k phases'
    steps, and ``train`` evaluates there, so ``forgetting`` can read the metric at each phase end).
    ``loss_fns`` holds every task so every phase's History has the same tasks. ``train_kwargs`` go to
    each phase (lr, eval_fn, eval_every, weighting, ...); without an ``optimizer`` each phase starts
    a fresh Adam, as fine-tuning on a new task does.
    """
    if not loaders:
        raise ValueError("loaders is empty; pass {task: loader of that task's batches} in training order")
    unknown = [task for task in loaders if task not in loss_fns]
    if unknown:
        raise ValueError(f"no loss function for task(s) {', '.join(unknown)}; loss_fns has: {', '.join(loss_fns)}")
    if isinstance(steps_per_task, Mapping):
        missing = [task for task in loaders if task not in steps_per_task]
        if missing:
            raise ValueError(f"steps_per_task has no entry for task(s) {', '.join(missing)}")
        steps = {task: steps_per_task[task] for task in loaders}
    else:
        steps = dict.fromkeys(loaders, steps_per_task)
    desc = train_kwargs.pop("desc", "sequential")
    history: History | None = None
    for k, (task, loader) in enumerate(loaders.items(), start=1):
        phase = train(model, loader, loss_fns, steps[task], desc=f"{desc}: {task} ({k}/{len(loaders)})", **train_kwargs)
        if history is None:
            history = phase
        else:
            history.extend(phase)
    return history


class Forgetting(NamedTuple):
    """A task's metric at the end of its own phase and at the end of training, and how much was lost.

    forgotten = before − after for a metric where higher is better (accuracy), after − before for
    one where lower is better (a loss, an error): positive means the task got worse.
    """

    before: float
    after: float
    forgotten: float


def forgetting(history: History, metric: str, phase_end: int, higher_is_better: bool = True) -> Forgetting:
    """How much of ``metric`` (e.g. ``"sentiment/accuracy"``) was lost after step ``phase_end``.

    Reads the evaluation recorded at step ``phase_end`` (``train_sequential`` evaluates at every
    phase end) and the last one.
    """
    if metric not in history.metrics:
        raise ValueError(f"no metric {metric!r} in the history; it has: {', '.join(history.metrics) or 'none'}")
    if phase_end not in history.eval_steps:
        raise ValueError(
            f"no evaluation at step {phase_end}; evaluations were at steps {history.eval_steps[:5]}"
            f"{' ...' if len(history.eval_steps) > 5 else ''} (train_sequential evaluates at each phase end)"
        )
    values = history.metrics[metric]
    before, after = values[history.eval_steps.index(phase_end)], values[-1]
    if math.isnan(before) or math.isnan(after):
        raise ValueError(f"metric {metric!r} is nan at step {phase_end} or at the end; evaluate it in every phase")
    return Forgetting(before, after, before - after if higher_is_better else after - before)
