"""Chapter 04's study: forgetting under sequential training, schedules on two text tasks, and temperature
sampling of a 10x smaller task against early-stopped single-task baselines.

Three kinds of run (``config["kind"]``), all small models, one torch thread each:

- ``"synthetic"``: chapter 02's pair of regressions whose directions have cosine p (a linear trunk to 4
  numbers, a tanh head per task), trained jointly, round robin or sequentially (task 1, then task 2) on
  the same examples per task. It stores each task's test R² = 1 − NMSE (in %) over training and, for
  the sequential run, task 1's R² at the end of its own phase.
- ``"schedules"``: sentiment and supersense on frozen MiniLM features (a shared MLP, a linear head per
  task): single-task models, joint, round robin and both sequential orders.
- ``"temperature"``: supersense (all its training glosses) with a 10x smaller stratified subset of
  condition, single-task batches drawn with replacement from p_t ∝ N_t^(1/τ); or one of the two tasks
  alone (``"tau": None``), the single-task baseline.

Tuning: every text run (every arm, baselines included) evaluates a validation split carved from each
task's training split (``VALIDATION_SHARE`` of every class, ``validation_split``) at the same steps, and
its score on a task is the test accuracy at the evaluation with the lowest validation loss of that task
(early stopping, ``early_stopped``); the score at the last step is kept beside it. The test split is
never read for a choice.

Seeds: the pilot is the chapter's earlier 5-seed run (committed 2026-12-02): τ = 2 − τ = 1 on condition
had paired sd 0.62 points and the single-task baselines' sd was 0.6-0.8 points, so a paired sd of
``PILOT_DIFFERENCE_SD`` = 0.9 points is assumed for τ = 2 − single-task; ``evidence.seeds_for_power(0.9,
0.8)`` = 12 seeds detect a 0.8-point difference with 80 % power (``DEFAULT_SEEDS``). The forgetting
difference between p = 0.9 and p = 0 (0.3 NMSE, per-p sd 0.15-0.39) is exploratory at these seeds.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from mtl_tutorial.data import MultiTaskDataset, load_text_tasks, make_correlated_tasks, multitask_loader
from mtl_tutorial.evidence import Comparison, seeds_for_power
from mtl_tutorial.features import frozen_features
from mtl_tutorial.models import HardSharingModel, mlp
from mtl_tutorial.runtime import seed_everything
from mtl_tutorial.schedules import schedule_loader, train_sequential
from mtl_tutorial.studies.feature_tasks import validation_split
from mtl_tutorial.studies.runner import Study, StudyResults, one_thread_run
from mtl_tutorial.training import accuracy, evaluate, majority_class_accuracy, normalized_mean_squared_error, train

PILOT_DIFFERENCE_SD = 0.9   # points: τ = 2 − single-task on condition, assumed from the 5-seed pilot (module docstring)
SMALLEST_DIFFERENCE = 0.8   # points of condition accuracy the temperature comparisons must resolve
DEFAULT_SEEDS = tuple(range(seeds_for_power(PILOT_DIFFERENCE_SD, SMALLEST_DIFFERENCE, minimum=5)))
VALIDATION_SHARE = 0.2      # of every class of a task's training split, held out for early stopping

CORRELATIONS = (0.0, 0.5, 0.9)
SCHEDULES = ("joint", "round robin", "sequential")
TEXT_TASKS = ("sentiment", "supersense")
TEXT_SCHEDULES = ("single-task", "joint", "round robin", "sequential sentiment→supersense",
                  "sequential supersense→sentiment")
LARGE_TASK, SMALL_TASK, IMBALANCE = "supersense", "condition", 10
TEMPERATURES = (1.0, 2.0, 5.0, math.inf)
PAIRED = "paired by seed"   # the one pseudo-task of ``chapter_scores``: every comparison is a paired one


def tau_label(tau: float | None, task: str | None = None) -> str:
    """``"τ = 2"``, ``"τ = ∞"``, or ``"single-task condition"`` (tau None)."""
    if tau is None:
        return f"single-task {task}"
    return "τ = ∞" if math.isinf(tau) else f"τ = {tau:g}"


PRIMARY = (
    Comparison("p = 0.5: joint, task 1", "p = 0.5: sequential, task 1", PAIRED),   # does sequential training forget?
    Comparison("τ = 2, condition", "τ = 1, condition", PAIRED),                       # does up-sampling the small task pay?
    Comparison("τ = 2, condition", "single-task condition, condition", PAIRED),       # ... against a tuned baseline?
)


def synthetic_config(correlation: float, schedule: str, seed: int, fast: bool = False) -> dict:
    return {"kind": "synthetic", "label": f"p = {correlation:g}: {schedule}", "seed": seed, "correlation": correlation,
            "schedule": schedule, "steps": 100 if fast else 1000, "eval_every": 25 if fast else 50, "batch_size": 32,
            "lr": 3e-3, "num_train": 1000, "num_test": 2000, "input_dim": 100, "trunk_width": 4, "head_width": 32}


def schedules_config(schedule: str, seed: int, fast: bool = False) -> dict:
    return {"kind": "schedules", "label": schedule, "seed": seed, "schedule": schedule, "tasks": list(TEXT_TASKS),
            "steps": 40 if fast else 300, "eval_every": 20 if fast else 25, "batch_size": 32, "lr": 1e-3,
            "hidden": 64, "validation_share": VALIDATION_SHARE, "max_per_task": 80 if fast else None}


def temperature_config(tau: float | None, seed: int, task: str | None = None, fast: bool = False) -> dict:
    return {"kind": "temperature", "label": tau_label(tau, task), "seed": seed,
            "tau": None if tau is None else ("inf" if math.isinf(tau) else tau), "task": task,
            "large": LARGE_TASK, "small": SMALL_TASK, "imbalance": IMBALANCE, "steps": 60 if fast else 1500,
            "eval_every": 30 if fast else 100, "batch_size": 32, "lr": 1e-3, "hidden": 64,
            "validation_share": VALIDATION_SHARE, "max_per_task": 200 if fast else None}


def grid(seeds, fast: bool = False) -> list[dict]:
    """Seeds outermost (an interrupted study has whole seeds); fast: few steps on small subsets, the same code."""
    configs = []
    for seed in seeds:
        configs += [synthetic_config(p, schedule, seed, fast) for p in CORRELATIONS for schedule in SCHEDULES]
        configs += [schedules_config(schedule, seed, fast) for schedule in TEXT_SCHEDULES]
        configs += [temperature_config(tau, seed, fast=fast) for tau in TEMPERATURES]
        configs += [temperature_config(None, seed, task, fast) for task in (SMALL_TASK, LARGE_TASK)]
    return configs


# ---------------------------------------------------------------- data (loaded once per process)

@functools.lru_cache(maxsize=4)
def text_data(tasks: tuple[str, ...], max_per_task: int | None, share: float) -> dict:
    """task -> {"train", "validation", "test": (frozen MiniLM features (N, 384), labels (N,)), "classes",
    "majority"}: the validation split is ``share`` of every class of the training split (seed 0)."""
    out = {}
    for split_name in ("train", "test"):
        loaded = load_text_tasks(list(tasks), split=split_name, max_per_task=max_per_task)
        for name, task in loaded.items():
            out.setdefault(name, {})[split_name] = (frozen_features(task.texts, progress=False), task.labels)
            out[name]["classes"] = task.num_classes
    for name, parts in out.items():
        x, y = parts["train"]
        pool, validation = validation_split(y, share)
        parts["train"], parts["validation"] = (x[pool], y[pool]), (x[validation], y[validation])
        parts["majority"] = majority_class_accuracy(y[pool], parts["test"][1])
    return out


def subsample(labels: torch.Tensor, size: int) -> torch.Tensor:
    """Sorted indices of a stratified subset of about ``size`` of ``labels`` (N,) (every class keeps its
    share, at least one example; seed 0)."""
    if not 0 < size < len(labels):
        raise ValueError(f"size must be between 1 and {len(labels) - 1} (the number of labels minus one), got {size!r}")
    return validation_split(labels, size / len(labels))[1]


# ---------------------------------------------------------------- the runs

def run_synthetic(config: dict) -> tuple[dict, nn.Module]:
    n, seed = config["num_train"], config["seed"]
    data = make_correlated_tasks(2 * n + config["num_test"], correlation=config["correlation"],
                                 input_dim=config["input_dim"], seed=seed)
    tasks = ("task 1", "task 2")
    train_data = {t: (data.x[k * n:(k + 1) * n], data.y[k * n:(k + 1) * n, k]) for k, t in enumerate(tasks)}
    test_data = {t: (data.x[2 * n:], data.y[2 * n:, k]) for k, t in enumerate(tasks)}
    losses = dict.fromkeys(tasks, nn.functional.mse_loss)
    seed_everything(seed)
    width = config["trunk_width"]
    model = HardSharingModel(nn.Linear(config["input_dim"], width), {
        t: nn.Sequential(mlp(width, config["head_width"], activation=nn.Tanh), nn.Linear(config["head_width"], 1),
                         nn.Flatten(0)) for t in tasks})
    steps, b, schedule = config["steps"], config["batch_size"], config["schedule"]
    per_joint_step = 1 if schedule == "joint" else 2    # evaluate after the same examples in every schedule
    common = dict(lr=config["lr"], progress=False, eval_every=config["eval_every"] * per_joint_step,
                  eval_fn=lambda m: evaluate(m, test_data, {"nmse": normalized_mean_squared_error}))
    if schedule == "sequential":
        loaders = {t: multitask_loader(MultiTaskDataset({t: train_data[t]}), b, seed=seed, replacement=True,
                                       num_batches=steps) for t in tasks}
        history = train_sequential(model, loaders, losses, steps, **common)
    else:
        loader = schedule_loader(MultiTaskDataset(train_data), "joint" if schedule == "joint" else "round_robin", b,
                                 steps * per_joint_step, seed=seed)
        history = train(model, loader, losses, steps * per_joint_step, **common)
    r2 = {t: [round(100 * (1 - v), 4) for v in history.metrics[f"{t}/nmse"]] for t in tasks}
    metrics = {"scores": {t: r2[t][-1] for t in tasks}, "curves": r2,
               "examples": [s * b * (2 if schedule == "joint" else 1) for s in history.eval_steps]}
    if schedule == "sequential":
        metrics["phase_end"] = {"task 1": r2["task 1"][history.eval_steps.index(steps)]}
    return metrics, model


def early_stopped(validation_loss: Sequence[float], test_values: Sequence[float]) -> tuple[int, float]:
    """(index, test value) at the evaluation with the lowest validation loss (the first on ties).

    validation_loss, test_values: (E,) one per evaluation of a run. The test values are only read at the
    index the validation split chose.
    """
    validation_loss = np.asarray(validation_loss, dtype=float)
    if validation_loss.ndim != 1 or len(validation_loss) != len(test_values) or len(validation_loss) == 0:
        raise ValueError(f"validation_loss and test_values must be equally long, non-empty 1-d sequences "
                         f"(one value per evaluation), got lengths {len(validation_loss)} and {len(test_values)}")
    if np.isnan(validation_loss).any():
        raise ValueError("validation_loss holds nan: evaluate every task's validation loss at every evaluation")
    best = int(np.argmin(validation_loss))
    return best, float(test_values[best])


def _text_eval(validation: dict, test: dict):
    """eval_fn: validation loss and accuracy, test accuracy and loss of every task in ``test``."""
    def eval_fn(model):
        return ({f"validation {k}": v for k, v in evaluate(model, validation, {"loss": nn.functional.cross_entropy,
                                                                                "accuracy": accuracy}).items()}
                | evaluate(model, test, {"accuracy": accuracy, "loss": nn.functional.cross_entropy}))
    return eval_fn


def _summarise(histories: dict, test: dict, steps_of: dict) -> dict:
    """A text run's metrics from {task: the History that trained and scored it}."""
    scores, final, correct, best_step, curves = {}, {}, {}, {}, {}
    for task, history in histories.items():
        index, scores[task] = early_stopped(history.metrics[f"validation {task}/loss"], history.metrics[f"{task}/accuracy"])
        final[task] = history.metrics[f"{task}/accuracy"][-1]
        best_step[task] = history.eval_steps[index]
        correct[task] = round(scores[task] * len(test[task][1]))
        curves[task] = {name: [round(v, 5) for v in history.metrics[f"{prefix}{task}/{name.split()[-1]}"]]
                        for name, prefix in (("test accuracy", ""), ("test loss", ""),
                                             ("validation loss", "validation "), ("validation accuracy", "validation "))}
        curves[task]["steps"] = list(history.eval_steps)
        curves[task]["examples"] = [s * steps_of[task] for s in history.eval_steps]
    return {"scores": scores, "final": final, "correct": correct, "best_step": best_step, "curves": curves,
            "test_examples": {t: len(test[t][1]) for t in histories}}


def run_schedules(config: dict) -> tuple[dict, nn.Module]:
    data = text_data(tuple(config["tasks"]), config["max_per_task"], config["validation_share"])
    tasks, seed, steps, b = config["tasks"], config["seed"], config["steps"], config["batch_size"]
    train_data = {t: data[t]["train"] for t in tasks}
    validation, test = {t: data[t]["validation"] for t in tasks}, {t: data[t]["test"] for t in tasks}
    losses = dict.fromkeys(tasks, nn.functional.cross_entropy)
    schedule = config["schedule"]

    def fresh(names):
        seed_everything(seed)
        return HardSharingModel(mlp(384, config["hidden"]), {t: nn.Linear(config["hidden"], data[t]["classes"]) for t in names})

    def single_loader(task):
        return multitask_loader(MultiTaskDataset({task: train_data[task]}), b, seed=seed, replacement=True, num_batches=steps)

    common = dict(lr=config["lr"], progress=False)
    metrics: dict = {}
    if schedule == "single-task":
        histories = {}
        for t in tasks:
            histories[t] = train(fresh([t]), single_loader(t), {t: losses[t]}, steps, eval_every=config["eval_every"],
                                 eval_fn=_text_eval({t: validation[t]}, {t: test[t]}), **common)
        model, per_step = None, b
    elif schedule.startswith("sequential"):
        order = schedule.removeprefix("sequential ").split("→")
        model = fresh(tasks)
        history = train_sequential(model, {t: single_loader(t) for t in order}, losses, steps,
                                   eval_every=config["eval_every"], eval_fn=_text_eval(validation, test), **common)
        histories, per_step = dict.fromkeys(tasks, history), b
        first = order[0]
        metrics["phase_end"] = {first: history.metrics[f"{first}/accuracy"][history.eval_steps.index(steps)]}
    else:
        joint = schedule == "joint"
        model = fresh(tasks)
        loader = schedule_loader(MultiTaskDataset(train_data), "joint" if joint else "round_robin", b,
                                 steps * (1 if joint else 2), seed=seed)
        history = train(model, loader, losses, steps * (1 if joint else 2),
                        eval_every=config["eval_every"] * (1 if joint else 2), eval_fn=_text_eval(validation, test), **common)
        histories, per_step = dict.fromkeys(tasks, history), b * (len(tasks) if joint else 1)
    metrics |= _summarise(histories, test, dict.fromkeys(tasks, per_step))
    metrics["majority"] = {t: data[t]["majority"] for t in tasks}
    return metrics, model


def temperature_sizes(large: str = LARGE_TASK, small: str = SMALL_TASK, imbalance: int = IMBALANCE,
                      share: float = VALIDATION_SHARE, max_per_task: int | None = None) -> dict[str, int]:
    """The training sizes N_t of the temperature runs, from the labels alone (no features computed):
    the large task's training split less its validation split, and 1/imbalance of that for the small task."""
    labels = {t: task.labels for t, task in load_text_tasks([large, small], max_per_task=max_per_task).items()}
    pools = {t: len(validation_split(y, share)[0]) for t, y in labels.items()}
    small_pool = labels[small][validation_split(labels[small], share)[0]]
    return {large: pools[large], small: len(subsample(small_pool, pools[large] // imbalance))}


@functools.lru_cache(maxsize=2)
def temperature_data(large: str, small: str, imbalance: int, max_per_task: int | None, share: float) -> dict:
    """``text_data`` of the two tasks with the small task's training pool cut to a stratified 1/imbalance
    of the large task's (its validation and test splits are kept whole)."""
    data = {t: dict(parts) for t, parts in text_data((large, small), max_per_task, share).items()}
    x, y = data[small]["train"]
    keep = subsample(y, len(data[large]["train"][1]) // imbalance)
    data[small]["train"] = (x[keep], y[keep])
    data[small]["majority"] = majority_class_accuracy(y[keep], data[small]["test"][1])
    return data


def run_temperature(config: dict) -> tuple[dict, nn.Module]:
    data = temperature_data(config["large"], config["small"], config["imbalance"], config["max_per_task"],
                            config["validation_share"])
    tasks = [config["task"]] if config["tau"] is None else [config["large"], config["small"]]
    seed, steps, b = config["seed"], config["steps"], config["batch_size"]
    dataset = MultiTaskDataset({t: data[t]["train"] for t in tasks})
    validation, test = {t: data[t]["validation"] for t in tasks}, {t: data[t]["test"] for t in tasks}
    seed_everything(seed)
    model = HardSharingModel(mlp(384, config["hidden"]), {t: nn.Linear(config["hidden"], data[t]["classes"]) for t in tasks})
    if config["tau"] is None:
        loader = multitask_loader(dataset, b, seed=seed, replacement=True, num_batches=steps)
    else:
        tau = math.inf if config["tau"] == "inf" else float(config["tau"])
        loader = multitask_loader(dataset, b, "temperature", tau, seed=seed, replacement=True, num_batches=steps)
    history = train(model, loader, dict.fromkeys(tasks, nn.functional.cross_entropy), steps, lr=config["lr"],
                    progress=False, eval_every=config["eval_every"], eval_fn=_text_eval(validation, test))
    metrics = _summarise(dict.fromkeys(tasks, history), test, dict.fromkeys(tasks, b))
    metrics |= {"drawn": {t: float((~np.isnan(history.losses[t])).mean()) for t in tasks},
                "passes": dict(zip(tasks, loader.batch_sampler.streams.passes)),
                "sizes": dict(dataset.sizes), "majority": {t: data[t]["majority"] for t in tasks}}
    return metrics, model


RUNS = {"synthetic": run_synthetic, "schedules": run_schedules, "temperature": run_temperature}


run = one_thread_run(RUNS)


def estimate_seconds(config: dict) -> float:
    """A run's time on one thread of a busy 2-core CPU (the mean of each kind in the study's 12 seeds,
    run beside four other studies: 20 min in all; about a third of that alone)."""
    if config["kind"] == "synthetic":
        return 5.5 * config["steps"] / 1000 + 0.3
    if config["kind"] == "schedules":
        return 0.0045 * config["steps"] * (1 if config["schedule"] == "joint" else 2) + 0.3
    return 0.004 * config["steps"] + 0.3


# ---------------------------------------------------------------- reading the results

def _p(correlation: float) -> str:
    return f"p = {correlation:g}"


def chapter_scores(results: StudyResults) -> dict[str, dict[str, list[float]]]:
    """Every per-seed score the chapter compares, as {name: {PAIRED: values ordered by seed}} for
    ``evidence.family_intervals`` (one pseudo-task, so that one Holm family spans the chapter). Names:

    - ``"p = 0.5: joint, task 1"`` (test R², %), ``"p = 0.5: joint, mean"`` (of the two tasks),
      ``"p = 0.5: sequential, task 1 at its phase end"``, ``"p = 0.5: task 1's R² change in task 2's phase"``
      (after − before: negative is forgetting);
    - ``"joint, sentiment"`` (early-stopped test accuracy), ``"joint, sentiment at the end"``,
      ``"sequential sentiment→supersense, sentiment at its phase end"``, ``"majority class, sentiment"``;
    - ``"τ = 2, condition"``, ``"τ = 2, condition at the end"``, ``"single-task condition, condition"``.
    """
    out: dict[str, list[float]] = {}
    for correlation in CORRELATIONS:
        for schedule in SCHEDULES:
            rows = results.select(f"{_p(correlation)}: {schedule}")
            for task in ("task 1", "task 2"):
                out[f"{_p(correlation)}: {schedule}, {task}"] = [r["metrics"]["scores"][task] for r in rows]
            out[f"{_p(correlation)}: {schedule}, mean"] = [float(np.mean(list(r["metrics"]["scores"].values()))) for r in rows]
        rows = results.select(f"{_p(correlation)}: sequential")
        before = [r["metrics"]["phase_end"]["task 1"] for r in rows]
        out[f"{_p(correlation)}: sequential, task 1 at its phase end"] = before
        out[f"{_p(correlation)}: task 1's R² change in task 2's phase"] = [
            r["metrics"]["scores"]["task 1"] - b for r, b in zip(rows, before)]
    text_labels = list(TEXT_SCHEDULES) + [tau_label(t) for t in TEMPERATURES] + [
        tau_label(None, t) for t in (SMALL_TASK, LARGE_TASK)]
    for label in text_labels:
        rows = results.select(label)
        for task in rows[0]["metrics"]["scores"]:
            out[f"{label}, {task}"] = [100 * r["metrics"]["scores"][task] for r in rows]
            out[f"{label}, {task} at the end"] = [100 * r["metrics"]["final"][task] for r in rows]
            out[f"majority class, {task}"] = [100 * r["metrics"]["majority"][task] for r in rows]
            if "phase_end" in rows[0]["metrics"] and task in rows[0]["metrics"]["phase_end"]:
                out[f"{label}, {task} at its phase end"] = [100 * r["metrics"]["phase_end"][task] for r in rows]
    return {name: {PAIRED: values} for name, values in out.items()}


def _exploratory() -> tuple[Comparison, ...]:
    """The chapter's further comparisons (Holm-adjusted together), in the order the chapter reads them."""
    c = []
    for p in map(_p, CORRELATIONS):
        c.append((f"{p}: joint, mean", f"{p}: round robin, mean"))
    for p in map(_p, CORRELATIONS):
        if p != _p(0.5):
            c.append((f"{p}: joint, task 1", f"{p}: sequential, task 1"))
        c.append((f"{p}: sequential, task 1 at its phase end", f"{p}: sequential, task 1"))
    c.append(("p = 0.5: joint, task 2", "p = 0.5: sequential, task 2"))
    change = "task 1's R² change in task 2's phase"
    c += [(f"p = 0.9: {change}", f"p = 0: {change}"), (f"p = 0.9: {change}", f"p = 0.5: {change}"),
          (f"p = 0.5: {change}", f"p = 0: {change}")]
    sequential = [s for s in TEXT_SCHEDULES if s.startswith("sequential")]
    for task in TEXT_TASKS:
        c += [(f"joint, {task}", f"single-task, {task}"), (f"joint, {task}", f"round robin, {task}")]
    c += [("single-task, sentiment", "majority class, sentiment"),
          ("single-task, sentiment", "single-task, sentiment at the end")]
    for schedule in sequential:
        first = schedule.removeprefix("sequential ").split("→")[0]
        c.append((f"{schedule}, {first} at its phase end", f"{schedule}, {first} at the end"))
    small, large = SMALL_TASK, LARGE_TASK
    c += [(f"τ = 5, {small}", f"τ = 2, {small}"), (f"τ = ∞, {small}", f"τ = 2, {small}"),
          (f"τ = 1, {small}", f"single-task {small}, {small}"),
          (f"single-task {small}, {small}", f"single-task {small}, {small} at the end"),
          (f"τ = 2, {small} at the end", f"single-task {small}, {small} at the end"),
          (f"τ = 2, {large}", f"τ = 1, {large}"), (f"τ = ∞, {large}", f"τ = 1, {large}"),
          (f"τ = 2, {large}", f"single-task {large}, {large}"), (f"τ = 2, {large}", f"τ = 2, {large} at the end")]
    return tuple(Comparison(a, b, PAIRED) for a, b in c)


EXPLORATORY = _exploratory()


STUDY = Study(
    chapter="04",
    slug="training_schedules",
    question="how much does sequential training forget, and what does temperature sampling buy a small task "
             "against an early-stopped single-task model?",
    grid=grid,
    run=run,
    estimate_seconds=estimate_seconds,
    primary=PRIMARY,
    default_seeds=DEFAULT_SEEDS,
)
