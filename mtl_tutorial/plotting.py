"""Figures of the course: one idea per figure, labelled axes, each function returns its ``Axes``.

Pass ``ax=`` to draw into an existing figure; without it a new figure is made (``ax.figure``).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes

from mtl_tutorial.data import task_probabilities
from mtl_tutorial.objectives import LossFn, ScalarizationSweep, pareto_front, scalarization_sweep
from mtl_tutorial.training import History


def _axes(ax: Axes | None, size: tuple[float, float] = (6.0, 4.0)) -> Axes:
    return ax if ax is not None else plt.subplots(figsize=size, layout="constrained")[1]


def exponential_moving_average(values: Sequence[float] | np.ndarray, smoothing: float) -> np.ndarray:
    """s_k = smoothing · s_(k-1) + (1 - smoothing) · v_k, started at s_0 = v_0: (K,) -> (K,).

    smoothing in [0, 1): 0 returns the values unchanged, 0.9 averages over roughly the last 10.
    """
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing!r}")
    values = np.asarray(values, dtype=float)
    smoothed = np.empty_like(values)
    for k, value in enumerate(values):
        smoothed[k] = value if k == 0 else smoothing * smoothed[k - 1] + (1 - smoothing) * value
    return smoothed


def plot_loss_curves(
    history: History,
    smoothing: float = 0.0,
    log_scale: bool = False,
    ylabel: str = "training loss",
    ax: Axes | None = None,
) -> Axes:
    """Each task's training loss against the step (raw curve faint when ``smoothing`` > 0)."""
    ax = _axes(ax)
    for task in history.tasks:
        steps, losses = history.loss_curve(task)
        if smoothing > 0:
            (line,) = ax.plot(steps, exponential_moving_average(losses, smoothing), label=task)
            ax.plot(steps, losses, color=line.get_color(), alpha=0.25, linewidth=0.8)
        else:
            ax.plot(steps, losses, label=task)
    ax.set(xlabel="training step (batches)", ylabel=ylabel)
    if log_scale:
        ax.set_yscale("log")
    ax.legend(title="task")
    return ax


def plot_task_weights(history: History, ax: Axes | None = None) -> Axes:
    """Each task's weight λ_t against the step."""
    ax = _axes(ax)
    for task in history.tasks:
        ax.plot(*history.weight_curve(task), label=task)
    ax.set(xlabel="training step (batches)", ylabel="task weight λ_t (dimensionless)")
    ax.legend(title="task")
    return ax


def plot_pareto_front(
    points: torch.Tensor | np.ndarray,
    reached: torch.Tensor | np.ndarray | None = None,
    labels: tuple[str, str] = ("loss of task 1", "loss of task 2"),
    ax: Axes | None = None,
) -> Axes:
    """Two-task losses of many candidates (grey), their Pareto front (line), and optional
    ``reached`` points (e.g. the joint optima of a λ sweep). points, reached: (N, 2)."""
    ax = _axes(ax, (5.0, 5.0))
    points = np.asarray(points, dtype=float)
    front = points[pareto_front(points).numpy()]
    front = front[np.argsort(front[:, 0])]
    ax.scatter(points[:, 0], points[:, 1], s=4, color="0.8", label="candidates")
    ax.plot(front[:, 0], front[:, 1], color="C0", linewidth=2, label="Pareto front")
    if reached is not None:
        reached = np.asarray(reached, dtype=float)
        ax.scatter(reached[:, 0], reached[:, 1], s=40, color="C3", zorder=3, label="weighted-sum optima")
    ax.set(xlabel=labels[0], ylabel=labels[1])
    ax.legend()
    return ax


def plot_weighted_objective(
    loss_fn: LossFn,
    lam: float,
    extent: tuple[float, float, float, float] = (-2.0, 2.0, -2.0, 2.0),
    resolution: int = 101,
    ax: Axes | None = None,
) -> Axes:
    """Contours of λ L_1(θ) + (1 - λ) L_2(θ) over θ ∈ R² with the two single-task optima and the
    joint optimum for this λ (found by ``scalarization_sweep``). extent: (x_min, x_max, y_min, y_max)."""
    ax = _axes(ax, (5.0, 5.0))
    xs = torch.linspace(extent[0], extent[1], resolution)
    ys = torch.linspace(extent[2], extent[3], resolution)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (R, R, 2)
    lambdas = torch.tensor([1.0, float(lam), 0.0])
    with torch.no_grad():
        weighted = (loss_fn(grid)[None] * torch.stack([lambdas, 1 - lambdas], -1)[:, None, None]).sum(-1)
    starts = grid.reshape(-1, 2)[weighted.reshape(3, -1).argmin(dim=1)]  # best grid point of each λ
    optima = scalarization_sweep(loss_fn, lambdas, starts, num_steps=200, lr=0.02).params
    contours = ax.contour(xs, ys, weighted[1], levels=20, cmap="viridis")
    ax.clabel(contours, fontsize=7)
    ax.scatter(*optima[0], marker="s", s=60, color="C0", label="optimum of task 1 alone")
    ax.scatter(*optima[2], marker="s", s=60, color="C1", label="optimum of task 2 alone")
    ax.scatter(*optima[1], marker="*", s=200, color="C3", label=f"joint optimum, λ = {lam:.2f}")
    ax.set(xlabel="θ₁ (shared parameter 1)", ylabel="θ₂ (shared parameter 2)", aspect="equal")
    ax.set_title(f"λ·L₁ + (1 − λ)·L₂ with λ = {lam:.2f}")
    ax.legend(loc="lower left", fontsize=8)
    return ax


def plot_sweep(sweep: ScalarizationSweep, labels: tuple[str, str] = ("task 1", "task 2"), ax: Axes | None = None) -> Axes:
    """Both task losses at the joint optimum, against the weight λ of task 1."""
    ax = _axes(ax)
    for column, label in enumerate(labels):
        ax.plot(sweep.lambdas, sweep.losses[:, column], marker="o", markersize=3, label=f"loss of {label}")
    ax.set(xlabel="λ (weight of task 1; task 2 gets 1 − λ)", ylabel="loss at the joint optimum")
    ax.legend()
    return ax


def plot_mean_std(
    x: Sequence[float] | np.ndarray,
    series: Mapping[str, np.ndarray],
    xlabel: str,
    ylabel: str,
    ax: Axes | None = None,
) -> Axes:
    """Mean ± one standard deviation over repeats (seeds) of each series against ``x``.

    series: label -> (S, K) array, S repeats of K values, one per x.
    """
    ax = _axes(ax)
    x = np.asarray(x, dtype=float)
    for offset, (label, values) in enumerate(series.items()):
        values = np.asarray(values, dtype=float)
        if values.ndim != 2 or values.shape[1] != len(x):
            raise ValueError(f"series {label!r} must have shape (repeats, {len(x)}), got {values.shape}")
        shift = (offset - (len(series) - 1) / 2) * 0.01 * (x.max() - x.min() or 1.0)  # keep bars apart
        ax.errorbar(x + shift, values.mean(0), yerr=values.std(0), marker="o", capsize=3, label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.legend()
    return ax

def plot_task_mix(
    sizes: Mapping[str, int],
    temperature: float,
    num_examples: int | None = None,
    measured: Mapping[str, float] | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Temperature sampling's task shares p_t ∝ N_t^(1/τ) as bars (τ = inf: uniform), one per task.

    sizes: task -> N_t. num_examples: examples a run draws in all; each bar is then labelled with
    the passes per example it implies, num_examples · p_t / N_t. measured: task -> share a sampler
    actually drew, shown as dots on the bars.
    """
    shares = task_probabilities(sizes, "temperature", temperature)
    ax = _axes(ax, (5.0, 3.5))
    tasks = list(sizes)
    bars = ax.bar(tasks, [shares[t] for t in tasks], color="tab:blue", alpha=0.7, label="p_t")
    if num_examples is not None:
        labels = [f"{num_examples * shares[t] / sizes[t]:.1f} passes" for t in tasks]
        ax.bar_label(bars, labels, padding=2)
    if measured is not None:
        ax.plot(tasks, [measured[t] for t in tasks], "ko", label="drawn by the sampler")
    ax.set(ylim=(0, 1.1), ylabel="share of the batches", xlabel="task (N_t training examples)",
           title=f"τ = {'∞ (uniform)' if math.isinf(temperature) else f'{temperature:g}'}: p_t ∝ N_t^(1/τ)")
    ax.set_xticks(range(len(tasks)), [f"{t}\n(N = {sizes[t]:,})" for t in tasks])
    ax.legend(loc="upper left")
    return ax

def plot_seed_points(
    values: Mapping[str, Sequence[float] | np.ndarray],
    ylabel: str,
    references: Mapping[str, float] | None = None,
    title: str | None = None,
    ax: Axes | None = None,
) -> Axes:
    """One column per method: every repeat (seed, support set) as a dot, the mean as a bar with its
    95 % interval (``evidence.mean_interval``), and horizontal reference lines (e.g. chance).

    values: method -> (S,) repeats, S ≥ 2; references: label -> y value.
    """
    from mtl_tutorial.evidence import mean_interval

    ax = _axes(ax, (6.0, 3.8))
    for position, (method, repeats) in enumerate(values.items()):
        repeats = np.asarray(repeats, dtype=float)
        interval = mean_interval(repeats)
        spread = np.linspace(-0.12, 0.12, len(repeats)) if len(repeats) > 1 else np.zeros(1)
        ax.plot(position + spread, repeats, "o", color="tab:blue", alpha=0.5, markersize=4)
        ax.errorbar(position, interval.mean, yerr=[[interval.mean - interval.low], [interval.high - interval.mean]],
                    fmt="_", color="k", markersize=18, capsize=6)
    for position, (label, y) in enumerate((references or {}).items()):
        ax.axhline(y, color="grey", ls=("--", ":", "-.")[position % 3], lw=1, label=label)
    ax.set_xticks(range(len(values)), list(values))
    ax.set(ylabel=ylabel, title=title or "")
    if references:
        ax.legend(fontsize=8)
    return ax
