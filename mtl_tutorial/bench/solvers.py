"""The gradient aggregators' weight solvers (MGDA, CAGrad, PCGrad), per call."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from mtl_tutorial.aggregation import cagrad_weights, mgda_weights, pcgrad_weights
from mtl_tutorial.models import HardSharingModel, mlp




def _seconds_per_call(fn: Callable[[], object], calls: int, rounds: int = 5) -> float:
    """Median over ``rounds`` of the mean wall time of ``calls`` calls of fn (after one warm-up call)."""
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def solver_times(
    num_tasks: Sequence[int] = (2, 4, 8), calls: int = 200, batch_size: int = 64, seed: int = 0
) -> dict[str, dict[int, float] | float]:
    """Seconds per call of the aggregators' weight solvers, beside one training pass of chapter 06's model.

    For each T, a Gram matrix of T random gradients (ill-conditioned: row norms from 0.1 to 10) is
    handed to ``pcgrad_weights``, ``mgda_weights`` (exact min-norm solver) and ``cagrad_weights``
    (c = 0.5). The reference is forward + backward of chapter 06's model (``mlp(384, 256)`` trunk,
    four linear heads) on a mixed batch of ``batch_size`` frozen features. Returns
    ``{"pcgrad": {T: s}, "mgda": {T: s}, "cagrad": {T: s}, "forward_backward": s}``.
    """
    generator = torch.Generator().manual_seed(seed)
    grams = {}
    for t in num_tasks:
        grads = torch.randn(t, 1000, generator=generator, dtype=torch.float64)
        grads = grads * torch.logspace(-1, 1, t, dtype=torch.float64)[:, None]
        grams[t] = grads @ grads.T
    solvers = {"pcgrad": pcgrad_weights, "mgda": mgda_weights, "cagrad": cagrad_weights}
    result: dict[str, dict[int, float] | float] = {
        name: {t: _seconds_per_call(lambda: solve(grams[t]), calls) for t in num_tasks}
        for name, solve in solvers.items()
    }
    classes = {"sentiment": 3, "condition": 5, "supersense": 11, "pos": 4}  # chapter 06's tasks
    model = HardSharingModel(mlp(384, 256), {task: nn.Linear(256, k) for task, k in classes.items()})
    features = torch.randn(batch_size, 384, generator=generator)
    names = [list(classes)[i % len(classes)] for i in range(batch_size)]
    labels = {task: torch.zeros(sum(n == task for n in names), dtype=torch.long) for task in classes}

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        outputs = model(features, names)
        sum(nn.functional.cross_entropy(out.outputs, labels[task]) for task, out in outputs.items()).backward()

    result["forward_backward"] = _seconds_per_call(forward_backward, max(calls // 10, 1))
    return result


def solver_time_table(times: Mapping[str, dict[int, float] | float]) -> str:
    """The result of ``solver_times`` as text: µs per call per solver and T, and the training pass."""
    num_tasks = list(times["mgda"])
    lines = [f"{'solver':<10}" + "".join(f"{f'T = {t}':>12}" for t in num_tasks) + "   (µs per call)"]
    for name in ("pcgrad", "mgda", "cagrad"):
        lines.append(f"{name:<10}" + "".join(f"{times[name][t] * 1e6:>12.1f}" for t in num_tasks))
    lines.append(f"chapter 06's model, forward + backward of one batch: {times['forward_backward'] * 1e6:.1f} µs")
    return "\n".join(lines)
