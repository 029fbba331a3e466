"""Figures of the course: one idea per figure, labelled axes, each function returns its ``Axes``.

Pass ``ax=`` to draw into an existing figure; without it a new figure is made (``ax.figure``).
Importing this module sets the course-wide figure resolution, ``FIGURE_DPI`` (matplotlib's default
is 100): every chapter imports it, so its PNGs stay small enough to keep a notebook under 600 KB,
and a 10-point label is still 10 pixels tall.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes

from mtl_tutorial.data import task_probabilities, toy_losses, toy_pareto_set
from mtl_tutorial.objectives import LossFn, ScalarizationSweep, pareto_front, scalarization_sweep
from mtl_tutorial.training import History

FIGURE_DPI = 72
plt.rcParams["figure.dpi"] = FIGURE_DPI


def _axes(ax: Axes | None, size: tuple[float, float] = (6.0, 4.0)) -> Axes:
    return ax if ax is not None else plt.subplots(figsize=size, layout="constrained")[1]


def exponential_moving_average(values: Sequence[float] | np.ndarray, smoothing: float) -> np.ndarray:
    """Bias-corrected moving average (as Adam's moments): (K,) -> (K,).

    m_k = smoothing · m_(k-1) + (1 - smoothing) · v_k from m_(-1) = 0, returned as
    m_k / (1 - smoothing^(k+1)): a weighted mean of v_0..v_k with weights ∝ smoothing^(k-j), so the
    first value weighs no more than its share (started at m_0 = v_0 instead, v_0 would still weigh
    smoothing^k after k steps: 0.15 after 18 at 0.9, read as a drift). smoothing in [0, 1): 0 returns
    the values unchanged, 0.9 averages over roughly the last 10.
    """
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing!r}")
    values = np.asarray(values, dtype=float)
    smoothed = np.empty_like(values)
    moment = 0.0
    for k, value in enumerate(values):
        moment = smoothing * moment + (1 - smoothing) * value
        smoothed[k] = moment / (1 - smoothing ** (k + 1))
    return smoothed


def plot_loss_curves(
    history: History,
    smoothing: float = 0.0,
    log_scale: bool = False,
    ylabel: str = "training loss",
    ax: Axes | None = None,
    show_raw: bool = True,
) -> Axes:
    """Each task's training loss against the step; with ``smoothing`` > 0 the moving average,
    over the raw curve drawn faint unless ``show_raw`` is False (an overview of many runs: the
    noisy raw curves are most of a PNG's bytes)."""
    ax = _axes(ax)
    for task in history.tasks:
        steps, losses = history.loss_curve(task)
        if smoothing > 0:
            (line,) = ax.plot(steps, exponential_moving_average(losses, smoothing), label=task)
            if show_raw:
                ax.plot(steps, losses, color=line.get_color(), alpha=0.25, linewidth=0.8)
        else:
            ax.plot(steps, losses, label=task)
    ax.set(xlabel="training step (batches)", ylabel=ylabel)
    if log_scale:
        ax.set_yscale("log")
    ax.legend(title="task")
    return ax


def plot_task_loss_by_run(
    histories: Mapping[str, History],
    task: str,
    smoothing: float = 0.9,
    title: str | None = None,
    ax: Axes | None = None,
) -> Axes:
    """One task's training loss in several runs, one line per run (the moving average when
    ``smoothing`` > 0), labelled with the run's name: e.g. the seeds of one setting beside a baseline."""
    if not histories:
        raise ValueError("no runs to plot: pass {run name: History}")
    ax = _axes(ax)
    for name, history in histories.items():
        steps, losses = history.loss_curve(task)
        ax.plot(steps, exponential_moving_average(losses, smoothing) if smoothing > 0 else losses, label=name)
    ax.set(xlabel="training step (batches)", ylabel=f"{task} training loss" + (" (smoothed)" if smoothing > 0 else ""))
    if title is not None:
        ax.set_title(title)
    ax.legend(fontsize=8)
    return ax


def plot_task_weights(history: History, ax: Axes | None = None) -> Axes:
    """Each task's weight λ_t against the step."""
    ax = _axes(ax)
    for task in history.tasks:
        ax.plot(*history.weight_curve(task), label=task)
    ax.set(xlabel="training step (batches)", ylabel="task weight λ_t (dimensionless)")
    ax.legend(title="task")
    return ax


def plot_losses_and_weights(
    history: History,
    smoothing: float = 0.0,
    log_scale: bool = False,
    weights_log_scale: bool = False,
    ylabel: str = "training loss",
    title: str | None = None,
) -> list[Axes]:
    """One run side by side: each task's training loss (left) and the weight λ_t it got (right).

    A widget's callback (chapter 05 picks the weighting strategy): what a strategy did to the
    weights next to what that did to the losses. smoothing, log_scale, ylabel: as ``plot_loss_curves``
    (raw curves drawn faint).
    """
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 3.6), layout="constrained")
    plot_loss_curves(history, smoothing=smoothing, log_scale=log_scale, ylabel=ylabel, ax=axes[0])
    plot_task_weights(history, ax=axes[1])
    axes[1].get_legend().remove()  # the same tasks in the same colours as on the left
    if weights_log_scale:
        axes[1].set_yscale("log")
    if title:
        fig.suptitle(title)
    return list(axes)

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


def plot_toy_paths(
    paths: torch.Tensor,
    title: str = "",
    contours: bool = True,
    extent: float = 10.0,
    ax: Axes | None = None,
) -> Axes:
    """Paths on the two-task toy landscape (``data.toy_landscape``) with its Pareto set (grey
    band): each start (●), its path, its end point (★), over contours of (L1 + L2)/2 unless
    ``contours`` is False (small multiples: the landscape is drawn once elsewhere).

    paths: (K + 1, S, 2), as ``data.toy_trajectories`` returns them. extent: the square [-e, e]² shown.
    """
    ax = _axes(ax, (4.0, 3.7))
    if contours:
        axis = torch.linspace(-extent, extent, 201)
        average = toy_losses(torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1)).mean(-1)
        ax.contour(axis, axis, average, levels=14, cmap="viridis", alpha=0.6)
    pareto_set = toy_pareto_set(201)
    ax.plot(pareto_set[:, 0], pareto_set[:, 1], color="0.4", linewidth=5, alpha=0.6, label="Pareto set")
    paths = torch.as_tensor(paths)
    for start in range(paths.shape[1]):
        ax.plot(paths[:, start, 0], paths[:, start, 1], color="C3", linewidth=1.5)
        ax.scatter(*paths[0, start], color="k", zorder=3)
        ax.scatter(*paths[-1, start], marker="*", s=150, color="C3", edgecolor="k", zorder=4)
    ax.set(xlabel="x1 (shared parameter 1)", ylabel="x2 (shared parameter 2)", title=title, aspect="equal",
           xlim=(-extent, extent), ylim=(-extent, extent))
    return ax

def _errorbar_series(
    x: Sequence[float] | np.ndarray,
    series: Mapping[str, np.ndarray],
    xlabel: str,
    ylabel: str,
    ax: Axes | None,
    centre_and_errors,
    min_repeats: int,
    spacing: float,
    **style,
) -> Axes:
    """Shared body of ``plot_mean_std`` and ``plot_mean_interval``: one error-bar line per series,
    shifted sideways by ``spacing`` of the x range so that the bars stay apart.
    centre_and_errors: (S, K) values -> (centres (K,), errors (K,) or (2, K))."""
    ax = _axes(ax)
    x = np.asarray(x, dtype=float)
    for offset, (label, values) in enumerate(series.items()):
        values = np.asarray(values, dtype=float)
        if values.ndim != 2 or values.shape[1] != len(x) or len(values) < min_repeats:
            repeats = f"repeats >= {min_repeats}" if min_repeats > 1 else "repeats"
            raise ValueError(f"series {label!r} must have shape ({repeats}, {len(x)}), got {values.shape}")
        centres, errors = centre_and_errors(values)
        shift = (offset - (len(series) - 1) / 2) * spacing * (x.max() - x.min() or 1.0)
        ax.errorbar(x + shift, centres, yerr=errors, capsize=3, label=label, **style)
    ax.set(xlabel=xlabel, ylabel=ylabel)
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
    return _errorbar_series(x, series, xlabel, ylabel, ax, lambda v: (v.mean(0), v.std(0)), 1, 0.01, marker="o")


def plot_task_mix(
    sizes: Mapping[str, int],
    temperature: float,
    num_examples: int | None = None,
    measured: Mapping[str, float] | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Temperature sampling's task shares p_t ∝ N_t^(1/τ) as bars (τ = inf: uniform), one per task.

    sizes: task -> N_t. num_examples: examples a run draws in all; each bar is then labelled with
    the passes per example it implies in expectation, num_examples · p_t / N_t ("expected": a run with
    replacement draws about that many). measured: task -> share a sampler
    actually drew, shown as dots on the bars. The legend sits in a band above share 1, where no
    bar or label can reach, so it covers neither (a share of 1, τ = 1 with one task, included).
    """
    shares = task_probabilities(sizes, "temperature", temperature)
    ax = _axes(ax, (5.0, 3.5))
    tasks = list(sizes)
    bars = ax.bar(tasks, [shares[t] for t in tasks], color="tab:blue", alpha=0.7, label="p_t")
    if num_examples is not None:
        labels = [f"{num_examples * shares[t] / sizes[t]:.1f} passes expected" for t in tasks]
        ax.bar_label(bars, labels, padding=5)  # clear of the dot drawn at the bar top
    if measured is not None:
        ax.plot(tasks, [measured[t] for t in tasks], "ko", label="drawn by the sampler")
    ax.set(ylim=(0, 1.35), ylabel="share of the batches", xlabel="task (N_t training examples)",
           title=f"τ = {'∞ (uniform)' if math.isinf(temperature) else f'{temperature:g}'}: p_t ∝ N_t^(1/τ)")
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_xticks(range(len(tasks)), [f"{t}\n(N = {sizes[t]:,})" for t in tasks])
    ax.legend(loc="upper center", ncols=2, fontsize="small", frameon=False)
    return ax


def plot_task_matrix(
    matrix: np.ndarray | torch.Tensor,
    tasks: Sequence[str],
    colorbar_label: str,
    row_label: str = "task i (stepped on)",
    column_label: str = "task j (measured)",
    diagonal: bool = True,
    fmt: str = "{:.3f}",
    ax: Axes | None = None,
) -> Axes:
    """A (T, T) matrix between tasks (task affinity, gradient cosines) as a heat map centred on 0,
    every cell written out with ``fmt``; red: positive, blue: negative.

    diagonal=False greys out the diagonal (a task with itself) and scales the colours to the
    off-diagonal entries, so that small cross-task values stay visible next to a large self-affinity.
    """
    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape != (len(tasks), len(tasks)):
        raise ValueError(f"matrix must have shape ({len(tasks)}, {len(tasks)}) for {len(tasks)} tasks, got {matrix.shape}")
    ax = _axes(ax, (5.0, 4.2))
    shown = matrix.copy()
    if not diagonal:
        np.fill_diagonal(shown, np.nan)
    limit = np.nanmax(np.abs(shown)) if np.isfinite(shown).any() else 1.0
    limit = limit or 1.0
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.85")
    image = ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, vmin=-limit, vmax=limit)
    for i in range(len(tasks)):
        for j in range(len(tasks)):
            dark = np.isfinite(shown[i, j]) and abs(shown[i, j]) > 0.6 * limit
            ax.text(j, i, fmt.format(matrix[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    ax.set_yticks(range(len(tasks)), tasks)
    ax.set(xlabel=column_label, ylabel=row_label)
    ax.figure.colorbar(image, ax=ax, label=colorbar_label)
    return ax


def plot_gate_heatmap(
    weights: np.ndarray | torch.Tensor, tasks: Sequence[str], experts: Sequence[str], ax: Axes | None = None
) -> Axes:
    """Mean gate weight of each task (rows) on each expert (columns), on a 0-1 colour scale.

    weights: (T, E), e.g. ``model.gate_weights(x).mean(0)`` of an MMoE or PLE model.
    """
    weights = np.asarray(weights, dtype=float)
    if weights.shape != (len(tasks), len(experts)):
        raise ValueError(f"weights must have shape ({len(tasks)}, {len(experts)}) = (tasks, experts), got {weights.shape}")
    ax = _axes(ax, (1.2 + 0.9 * len(experts), 1.2 + 0.6 * len(tasks)))
    image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(len(tasks)):
        for e in range(len(experts)):
            ax.text(e, i, f"{weights[i, e]:.2f}", ha="center", va="center", fontsize=8,
                    color="black" if weights[i, e] > 0.6 else "white")
    ax.set_xticks(range(len(experts)), experts, rotation=30, ha="right")
    ax.set_yticks(range(len(tasks)), tasks)
    ax.set(xlabel="expert", ylabel="task (its gate)")
    ax.figure.colorbar(image, ax=ax, label="mean gate weight")
    return ax


def plot_gates_at(
    gates: Mapping[str, Mapping[float, np.ndarray]],
    experts: Mapping[str, Sequence[str]],
    tasks: Sequence[str],
    correlation: float,
) -> list[Axes]:
    """One gate heat map per model at one task correlation, side by side (a widget's callback).

    gates: model name -> {correlation p: (T, E) mean gate weights}; experts: model name -> the E names.
    """
    fig, axes = plt.subplots(1, len(gates), figsize=(4.6 * len(gates), 2.5), layout="constrained")
    axes = list(np.atleast_1d(axes))
    for ax, (name, by_correlation) in zip(axes, gates.items()):
        if correlation not in by_correlation:
            raise ValueError(f"no gates of {name} at p = {correlation}; recorded: {sorted(by_correlation)}")
        plot_gate_heatmap(by_correlation[correlation], tasks, experts[name], ax=ax)
        ax.set_title(f"{name}, task correlation p = {correlation:g}")
    return axes


def plot_metric_curves(
    history: History, metrics: Mapping[str, str], ylabel: str, ax: Axes | None = None
) -> Axes:
    """Recorded metrics (``History.metrics``) against the evaluation step; metrics: label -> metric name."""
    ax = _axes(ax)
    for label, name in metrics.items():
        if name not in history.metrics:
            raise ValueError(f"the history has no metric {name!r}; it has: {', '.join(list(history.metrics)[:6])}")
        ax.plot(history.eval_steps, history.metrics[name], marker=".", label=label)
    ax.set(xlabel="training step (batches)", ylabel=ylabel)
    ax.legend()
    return ax


def plot_mean_interval(
    x: Sequence[float] | np.ndarray,
    series: Mapping[str, np.ndarray],
    xlabel: str,
    ylabel: str,
    ax: Axes | None = None,
) -> Axes:
    """Mean over repeats (seeds) and its 95 % interval (``evidence.mean_interval``) of each series
    against ``x``; series: label -> (S, K) array, S ≥ 2 repeats of K values, one per x."""
    from mtl_tutorial.evidence import mean_interval

    def centre_and_errors(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        intervals = [mean_interval(values[:, k]) for k in range(values.shape[1])]
        means = np.array([i.mean for i in intervals])
        return means, np.array([[i.mean - i.low for i in intervals], [i.high - i.mean for i in intervals]])

    return _errorbar_series(x, series, xlabel, ylabel, ax, centre_and_errors, 2, 0.008, marker="o", markersize=4)


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


def plot_score_vs_parameters(rows: Sequence, baseline: float | None = None, ax: Axes | None = None) -> Axes:
    """Chapter 10's showdown at a glance: mean task score (%) against trainable parameters (log x).

    rows: ``showdown.ShowdownRow`` s; one point per method at the mean over its seeds, with the 95 %
    interval of that mean (``evidence.mean_interval``; none with one seed). Methods with the same
    parameter count are drawn side by side (shifted by a few per cent along x), not on top of each
    other. The y-range is the methods' spread: ``baseline`` (e.g. the majority class) is written in
    the corner instead of drawn as a line far below the points.
    """
    from mtl_tutorial.evidence import mean_interval

    ax = _axes(ax, (7.5, 4.5))
    methods = list(dict.fromkeys(row.method for row in rows))
    if not methods:
        raise ValueError("rows is empty; pass the rows showdown() returned")
    markers = "osD^vP*Xph"
    placed: dict[int, int] = {}
    for k, method in enumerate(methods):
        mine = [row for row in rows if row.method == method]
        scores = 100 * np.array([row.mean_score for row in mine])
        params = mine[0].trainable_parameters
        x = params * 1.12 ** placed.get(params, 0)   # the second method at the same count sits 12 % to the right
        placed[params] = placed.get(params, 0) + 1
        if len(scores) > 1:
            interval = mean_interval(scores)
            yerr = [[interval.mean - interval.low], [interval.high - interval.mean]]
        else:
            yerr = None
        ax.errorbar(x, scores.mean(), yerr=yerr, fmt=markers[k % len(markers)], markersize=7, capsize=3,
                    label=f"{method} ({params:,})")
    if baseline is not None:
        below = 100 * baseline < ax.get_ylim()[0]
        ax.text(0.01, 0.01, f"majority class: {100 * baseline:.1f} %" + (" (below this range)" if below else ""),
                transform=ax.transAxes, fontsize=8, color="0.3")
    n = len({row.seed for row in rows})
    ax.set(xscale="log", xlabel="trainable parameters, all tasks (log scale)",
           ylabel=f"mean test accuracy over tasks (%)\nmean{' and 95 % interval' if n > 1 else ''}, {n} seed{'s' if n > 1 else ''}")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), title="method (trainable parameters)",
              title_fontsize=8)
    return ax


def plot_serving(results: Mapping[int, Mapping[str, Mapping[str, float]]], metric: str = "ratio_to_ceiling",
                 ax: Axes | None = None) -> Axes:
    """``{T: bench.serving_throughput(...)}`` against the number of tasks T, per set-up:

    - ``"ratio_to_ceiling"``: each set-up's speed over the ceiling's in the same round, the geometric
      mean over rounds with its 95 % interval as an error bar; points, not lines (a timing is not a
      trend), set-ups side by side at each T, and a line at 1 (as fast as the ceiling);
    - ``"examples_per_s"``: the median examples per second, points only;
    - ``"memory_bytes"``: the weights held, in MB (10⁶ bytes, log scale), one line per way of serving
      (the ceiling serves one task only and is left out), each with its own marker and dashes, so
      lines that lie on each other stay visible.
    """
    from matplotlib.ticker import FuncFormatter

    labels = {"ratio_to_ceiling": "speed ÷ the ceiling's, same round\n(geometric mean, 95 % interval)",
              "examples_per_s": "examples per second (median of rounds)", "memory_bytes": "weights in memory (MB)"}
    if metric not in labels:
        raise ValueError(f"metric must be one of: {', '.join(labels)}, got {metric!r}")
    ax = _axes(ax)
    counts = sorted(results)
    names = [name for name in results[counts[0]] if not (metric != "examples_per_s" and name == "ceiling")]
    positions = np.arange(len(counts), dtype=float)
    width = 0.6 / max(1, len(names))
    for k, name in enumerate(names):
        entries = [results[t][name] for t in counts]
        if metric == "memory_bytes":
            ax.plot(positions, [e["memory_bytes"] / 1e6 for e in entries], marker="osD^v"[k % 5],
                    linestyle=("-", "--", ":", "-.")[k % 4], markersize=8 - 2 * (k % 3), label=name)
        elif metric == "examples_per_s":
            ax.plot(positions + (k - (len(names) - 1) / 2) * width, [e["examples_per_s"] for e in entries], "o",
                    label=name)
        else:
            ratios = np.array([e["ratio_to_ceiling"] for e in entries])
            low = np.array([e["ratio_low"] for e in entries])
            high = np.array([e["ratio_high"] for e in entries])
            yerr = None if np.isnan(low).any() else [ratios - low, high - ratios]
            ax.errorbar(positions + (k - (len(names) - 1) / 2) * width, ratios, yerr=yerr, fmt="o", capsize=3,
                        label=name)
    if metric == "ratio_to_ceiling":
        ax.axhline(1.0, color="0.4", linestyle="--", linewidth=1, label="ceiling")
    ax.set(xlabel="tasks served T", ylabel=labels[metric])
    ax.set_xticks(positions, [str(t) for t in counts])
    if metric == "memory_bytes":
        ax.set_yscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
    ax.legend(fontsize=8)
    return ax


def plot_family(results: Sequence, unit: str = "pts", title: str | None = None, ax: Axes | None = None) -> Axes:
    """Paired differences as horizontal intervals, one row per comparison (``evidence.family_intervals``):
    primary comparisons black at 95 %, exploratory ones grey at their Holm-adjusted level; the line at
    0 is "no difference", so an interval crossing it is "no measurable difference"."""
    if not results:
        raise ValueError("results is empty; pass what evidence.family_intervals returned")
    ax = _axes(ax, (7.0, 0.45 * len(results) + 1.2))
    for row, result in enumerate(results):
        interval, primary = result.interval, result.role == "primary"
        ax.errorbar(interval.mean, row, xerr=[[interval.mean - interval.low], [interval.high - interval.mean]],
                    fmt="o", color="k" if primary else "0.55", capsize=3, markersize=4)
    ax.axvline(0, color="tab:red", linewidth=1, linestyle="--")
    ax.set_yticks(range(len(results)), [f"{r.comparison}{'  (primary)' if r.role == 'primary' else ''}" for r in results],
                  fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel=f"paired difference A − B ({unit}); black: primary, 95 %; grey: exploratory, Holm-adjusted",
           title=title or "")
    return ax
