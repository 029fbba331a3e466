"""Chapter 03's study: soft against hard sharing at equal capacity, the MMoE trend, and whether the
lookahead affinity (taken with the optimizer training uses) predicts which partner helps a text task.

Three kinds of run (``config["kind"]``), all small models on one torch thread:

- ``"synthetic"``: the MMoE paper's two regression tasks (``make_correlated_tasks``, inputs in R^100,
  task correlation p = 0 or 1) and one of ``MODELS``, trained 800 steps on mixed batches; scored by the
  share of the label variance it explains on 2000 test inputs, 1 − MSE / Var(y) (R², higher is
  better), averaged over the two tasks. Cross-stitch has two layers per column (9,130 parameters);
  hard sharing comes twice: the chapter's one-layer trunk of 64 units (7,522, matched to MMoE's
  7,562) and a two-layer trunk of 53 units (9,097): the depth and parameter count of cross-stitch.
  Cross-stitch runs also store their α over training; MMoE and CGC their gate weights on the test
  inputs. Only the two ends of p: a run takes ~7 s on one thread of a loaded CPU; the study took 20 min
  (over its 15-minute target), and six correlations (the chapter's earlier grid) would take three times that.
- ``"affinity"``: a shared layer of 128 units and a head per task on frozen MiniLM features of the
  four shipped text tasks, trained with Adam; every 5 steps the lookahead affinity Z (``relations``)
  is measured twice on the same batches: with Adam's own step (a copy of its state) and with the
  SGD step of η = 1 the chapter used before.
- ``"partners"``: sentiment trained alone, with each of the other three tasks as its partner, and
  a head on the frozen features: the check of the affinity's prediction (test loss of sentiment).

Primary comparisons (``PRIMARY``), declared before the study ran:
1. cross-stitch − two-layer hard sharing at p = 0 (R², in % of the label variance): does learned
   sharing beat hard sharing of the same depth and size where the tasks are unrelated?
2. (MMoE − hard sharing at p = 0) − (MMoE − hard sharing at p = 1), per seed: the MMoE paper's
   claim that MMoE's advantage grows as the correlation falls (> 0).
3. −test loss of sentiment with its predicted best partner − with its predicted worst partner, the
   prediction made by the Adam lookahead's Z averaged over the affinity runs (> 0: the prediction holds).

Seeds: the pilot is the chapter's earlier 5-seed run (2026-12-06) and a 5-seed pilot of the two
depth-matched models at p = 0 (``PILOT``): the paired differences had standard deviations
``PILOT_SD`` (points of R², nats); ``evidence.seeds_for_power`` at the smallest differences
``SMALLEST`` gives ``DEFAULT_SEEDS``, the most any of the three needs. Step sizes are the chapter's, untuned
and the same for every model (no model gets a tuning budget another lacks).

The worked solutions' runs are a study of their own: ``soft_sharing_exercises.EXERCISES``.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from mtl_tutorial.data import MultiTaskDataset, make_correlated_tasks, multitask_loader
from mtl_tutorial.evidence import Comparison, seeds_for_power
from mtl_tutorial.models import HardSharingModel, mlp
from mtl_tutorial.relations import TaskAffinity, affinity_matrix
from mtl_tutorial.runtime import seed_everything
from mtl_tutorial.sharing import (
    CrossStitchNetwork, MultiGateMixtureOfExperts, ProgressiveLayeredExtraction, SoftSharingPenalty,
    SoftSharingTowers, extraction_levels,
)
from mtl_tutorial.studies.feature_tasks import feature_data   # the four tasks' cached MiniLM features
from mtl_tutorial.studies.runner import Study, StudyResults, one_thread_run
from mtl_tutorial.training import History, accuracy, evaluate, macro_f1, majority_class_accuracy, normalized_mean_squared_error, train

# ---------------------------------------------------------------- (a) the synthetic tasks and the models
TASKS = ("task 1", "task 2")
CORRELATIONS = (0.0, 1.0)   # the two ends: unrelated and identical task directions
INPUT_DIM, NUM_EXPERTS, EXPERT_WIDTH, TOWER_WIDTH = 100, 4, 16, 8
HARD_WIDTH, COLUMN_WIDTH, DEEP_HARD_WIDTH = 64, 32, 53   # two layers of 53: 9,097 parameters, cross-stitch 9,130
RHO = 1e-2
DEEP_HARD = "hard sharing, 2 layers"
MODELS = ("hard sharing", DEEP_HARD, "penalty", "cross-stitch", "MMoE", "CGC")
EXPLAINED = "explained variance"               # the score: mean over the tasks of 1 − MSE / Var(y)


def _head(width: int) -> nn.Module:
    return nn.Sequential(mlp(width, TOWER_WIDTH), nn.Linear(TOWER_WIDTH, 1), nn.Flatten(0))


def synthetic_model(name: str, tasks: Sequence[str] = TASKS) -> nn.Module:
    """A fresh model ``name`` (one of ``MODELS``) for the synthetic tasks; each task's head is a tower of
    ``TOWER_WIDTH`` ReLU units and one output."""
    builders = {
        "hard sharing": lambda: HardSharingModel(mlp(INPUT_DIM, HARD_WIDTH), {t: _head(HARD_WIDTH) for t in tasks}),
        DEEP_HARD: lambda: HardSharingModel(mlp(INPUT_DIM, DEEP_HARD_WIDTH, DEEP_HARD_WIDTH),
                                            {t: _head(DEEP_HARD_WIDTH) for t in tasks}),
        "penalty": lambda: SoftSharingTowers({t: mlp(INPUT_DIM, COLUMN_WIDTH) for t in tasks},
                                             {t: _head(COLUMN_WIDTH) for t in tasks}),
        "cross-stitch": lambda: CrossStitchNetwork(
            {t: [mlp(INPUT_DIM, COLUMN_WIDTH), mlp(COLUMN_WIDTH, COLUMN_WIDTH)] for t in tasks},
            {t: _head(COLUMN_WIDTH) for t in tasks}),
        "MMoE": lambda: MultiGateMixtureOfExperts([mlp(INPUT_DIM, EXPERT_WIDTH) for _ in range(NUM_EXPERTS)],
                                                  {t: _head(EXPERT_WIDTH) for t in tasks}, gate_input_dim=INPUT_DIM),
        "CGC": lambda: ProgressiveLayeredExtraction(
            extraction_levels(list(tasks), INPUT_DIM, [EXPERT_WIDTH], num_task_experts=1,
                              num_shared_experts=NUM_EXPERTS - 2),
            {t: _head(EXPERT_WIDTH) for t in tasks}),
    }
    if name not in builders:
        raise ValueError(f"unknown model {name!r}; the models are: {', '.join(MODELS)}")
    return builders[name]()


def synthetic_label(model: str, correlation: float) -> str:
    """E.g. ``"cross-stitch, p = 0"``."""
    return f"{model}, p = {correlation:g}"


def synthetic_config(model: str, correlation: float, seed: int, fast: bool = False) -> dict:
    """4000 training inputs (each labelled for both tasks), 800 steps of 64; fast: 500 inputs, 60 steps."""
    return {"kind": "synthetic", "label": synthetic_label(model, correlation), "seed": seed, "model": model,
            "correlation": correlation, "num_train": 500 if fast else 4000, "num_test": 500 if fast else 2000,
            "steps": 60 if fast else 800, "batch_size": 64, "lr": 3e-3, "rho": RHO, "eval_every": 50}


# ---------------------------------------------------------------- (c) the text tasks
TEXT_TASKS = ("sentiment", "condition", "supersense", "pos")
TARGET = "sentiment"
PARTNERS = tuple(t for t in TEXT_TASKS if t != TARGET)
HEADS = "heads on frozen features"
ALONE = "alone"
BEST, WORST = "predicted best partner", "predicted worst partner"
NEGATIVE_LOSS = "−test loss"     # the score of the partner runs, in millinats (1e-3 nats): higher is better


def partner_label(partner: str | None) -> str:
    return ALONE if partner is None else f"+ {partner}"


def text_config(kind: str, label: str, seed: int, group: Sequence[str], fast: bool = False) -> dict:
    return {"kind": kind, "label": label, "seed": seed, "tasks": list(group), "target": TARGET,
            "model": "heads" if label == HEADS else "shared layer",
            "steps": 40 if fast else 200, "batch_size": 64, "lr": 1e-3, "width": 128, "affinity_every": 5,
            "sgd_lookahead_lr": 1.0, "max_per_task": 128 if fast else None}


# ---------------------------------------------------------------- seeds and the primary comparisons
PILOT_SD = {"cross-stitch − 2-layer hard, p = 0": 1.95,    # points of R²: this module's 5-seed pilot (see the docstring)
            "MMoE trend": 2.89,                           # points: the chapter's earlier 5 seeds, (p = 0) − (p = 1)
            "best − worst partner": 0.0054}               # nats: the chapter's earlier 10 seeds, condition − supersense
SMALLEST = {"cross-stitch − 2-layer hard, p = 0": 2.0, "MMoE trend": 2.5, "best − worst partner": 0.005}
DEFAULT_SEEDS = tuple(range(max(seeds_for_power(PILOT_SD[k], SMALLEST[k]) for k in PILOT_SD)))
AFFINITY_SEEDS = tuple(range(5))   # the affinity runs (the prediction) on the first five seeds

PRIMARY = (
    Comparison(synthetic_label("cross-stitch", 0.0), synthetic_label(DEEP_HARD, 0.0), EXPLAINED),
    Comparison("MMoE − hard sharing, p = 0", "MMoE − hard sharing, p = 1", EXPLAINED),
    Comparison(BEST, WORST, NEGATIVE_LOSS),
)


def grid(seeds, fast: bool = False) -> list[dict]:
    """Seeds outermost. Synthetic: every model at both correlations; text: the affinity runs on the seeds
    in ``AFFINITY_SEEDS``, the partner runs on all."""
    configs = []
    for seed in seeds:
        configs += [synthetic_config(m, p, seed, fast) for p in CORRELATIONS for m in MODELS]
        if seed in AFFINITY_SEEDS:
            configs.append(text_config("affinity", "affinity run", seed, TEXT_TASKS, fast))
        configs.append(text_config("partners", HEADS, seed, [TARGET], fast))
        configs += [text_config("partners", partner_label(p), seed, [TARGET] + ([p] if p else []), fast)
                    for p in (None, *PARTNERS)]
    return configs


# ---------------------------------------------------------------- the runs
def _synthetic_readouts(model: nn.Module, name: str, x_test: torch.Tensor, history) -> dict:
    if name == "cross-stitch":
        curves = {k: [round(v, 5) for v in values] for k, values in history.metrics.items()}
        return {"alphas": model.alpha_values().tolist(), "alpha_curves": {"steps": list(history.eval_steps), **curves}}
    if name in ("MMoE", "CGC"):
        with torch.no_grad():
            gates = model.gate_weights(x_test)   # (B, T, E)
        out = {"mean_gates": gates.mean(0).tolist()}
        if name == "MMoE":   # total variation between the two tasks' mixtures, averaged over the inputs
            out["gate_separation"] = float(0.5 * (gates[:, 0] - gates[:, 1]).abs().sum(-1).mean())
        else:                # the share of each task's gate weight on the shared experts
            out["shared_share"] = float(gates[:, :, -(NUM_EXPERTS - 2):].sum(-1).mean())
        return out
    return {}


def synthetic_data(config: dict) -> tuple[dict, dict, torch.Tensor]:
    """(train, test, test inputs) of a synthetic config: ``num_train`` inputs labelled for both tasks, then ``num_test``."""
    n = config["num_train"]
    data = make_correlated_tasks(n + config["num_test"], correlation=config["correlation"], input_dim=INPUT_DIM,
                                 seed=config["seed"])
    train_data = {t: (data.x[:n], data.y[:n, i]) for i, t in enumerate(TASKS)}
    test_data = {t: (data.x[n:], data.y[n:, i]) for i, t in enumerate(TASKS)}
    return train_data, test_data, data.x[n:]


def train_synthetic(config: dict, model: nn.Module, train_data: dict, **options) -> History:
    """Train ``model`` as every synthetic run trains: ``steps`` mixed batches, Adam at ``lr`` unless
    ``options`` holds an optimizer (``options``: ``train``'s weighting, optimizer, eval_fn, eval_every)."""
    loader = multitask_loader(MultiTaskDataset(train_data), config["batch_size"], mixed=True, seed=config["seed"])
    return train(model, loader, dict.fromkeys(TASKS, nn.functional.mse_loss), num_steps=config["steps"], lr=config["lr"],
                 progress=False, **options)


def explained_scores(model: nn.Module, test_data: dict) -> dict[str, float]:
    """{EXPLAINED: the mean over the tasks, task: R² = 1 − MSE / Var(y)} on the test data."""
    errors = evaluate(model, test_data, {"nmse": normalized_mean_squared_error})
    explained = {t: 1.0 - errors[f"{t}/nmse"] for t in TASKS}
    return {EXPLAINED: float(np.mean(list(explained.values()))), **explained}


def run_synthetic(config: dict) -> tuple[dict, nn.Module | None]:
    train_data, test_data, x_test = synthetic_data(config)
    seed_everything(config["seed"])
    model = synthetic_model(config["model"])
    stitch = config["model"] == "cross-stitch"
    history = train_synthetic(config, model, train_data,
                              weighting=SoftSharingPenalty(config["rho"]) if config["model"] == "penalty" else None,
                              eval_fn=(lambda m: m.alpha_metrics()) if stitch else None,   # α over training
                              eval_every=config["eval_every"] if stitch else None)
    extra = _synthetic_readouts(model, config["model"], x_test, history)
    return {"scores": explained_scores(model, test_data), **extra}, model


def _text_model(group: Sequence[str], width: int, num_classes: Mapping[str, int]) -> HardSharingModel:
    return HardSharingModel(mlp(384, width), {t: nn.Linear(width, num_classes[t]) for t in group})


def train_with_trackers(config: dict, trackers: Callable[[dict, dict, torch.optim.Optimizer], dict]) -> tuple[dict, nn.Module]:
    """Train the shared layer and heads on ``config["tasks"]`` (Adam), measuring every ``affinity_every``
    steps with each lookahead ``trackers(data, loss_fns, optimizer)`` returns ({name: TaskAffinity});
    returns ({"affinity": {name: Z (T, T)}, "cosine": {name: (T, T)}, "tasks", "train_seconds"}, the model)."""
    train_data, _, num_classes = feature_data(config["max_per_task"])
    tasks, seed = config["tasks"], config["seed"]
    data = {t: train_data[t] for t in tasks}
    ce = dict.fromkeys(tasks, nn.functional.cross_entropy)
    seed_everything(seed)
    model = _text_model(tasks, config["width"], num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    measured = trackers(data, ce, optimizer)
    loader = multitask_loader(MultiTaskDataset(data), config["batch_size"], strategy="uniform", mixed=True,
                              replacement=True, num_batches=config["steps"], seed=seed)
    start = time.perf_counter()
    history = train(model, loader, ce, num_steps=config["steps"], optimizer=optimizer, progress=False,
                    eval_fn=lambda m: {f"{k}:{name}": v for k, tracker in measured.items() for name, v in tracker(m).items()},
                    eval_every=config["affinity_every"])
    seconds = time.perf_counter() - start

    def matrix(step: str, kind: str) -> list:
        prefix = f"{step}:"
        view = SimpleNamespace(eval_steps=history.eval_steps,
                               metrics={k[len(prefix):]: v for k, v in history.metrics.items() if k.startswith(prefix)})
        return affinity_matrix(view, tasks, kind=kind).tolist()

    return {"affinity": {k: matrix(k, "affinity") for k in measured}, "cosine": {k: matrix(k, "cosine") for k in measured},
            "tasks": list(tasks), "train_seconds": round(seconds, 3)}, model


def run_affinity(config: dict) -> tuple[dict, nn.Module]:
    """Z with Adam's step and with the SGD step (same batches: two trackers with the same seed), and the cosines."""
    def trackers(data: dict, ce: dict, optimizer: torch.optim.Optimizer) -> dict:
        seed, size = config["seed"], config["batch_size"]
        return {"adam": TaskAffinity(data, ce, optimizer=optimizer, batch_size=size, seed=seed),
                "sgd": TaskAffinity(data, ce, lr=config["sgd_lookahead_lr"], batch_size=size, seed=seed)}

    metrics, model = train_with_trackers(config, trackers)
    return {"affinity": metrics["affinity"], "cosine": metrics["cosine"]["adam"], "tasks": metrics["tasks"]}, model


def run_partners(config: dict) -> tuple[dict, nn.Module]:
    """The target task alone, with a partner, or a head on the frozen features; the same number of target
    examples per step in every run (a pair's batch is split evenly between its two tasks)."""
    train_all, test_all, num_classes = feature_data(config["max_per_task"])
    target, group, seed = config["target"], config["tasks"], config["seed"]
    seed_everything(seed)
    if config["model"] == "heads":
        model = HardSharingModel(nn.Identity(), {target: nn.Linear(384, num_classes[target])})
    else:
        model = _text_model(group, config["width"], num_classes)
    loader = multitask_loader(MultiTaskDataset({t: train_all[t] for t in group}), config["batch_size"] * len(group) // 2,
                              strategy="uniform", mixed=len(group) > 1, replacement=True, num_batches=config["steps"], seed=seed)
    train(model, loader, dict.fromkeys(group, nn.functional.cross_entropy), num_steps=config["steps"], lr=config["lr"],
          progress=False)
    x, y = test_all[target]
    values = evaluate(model, {target: (x, y)}, {"loss": nn.functional.cross_entropy, "accuracy": accuracy, "macro_f1": macro_f1})
    scores = {"loss": values[f"{target}/loss"], "accuracy": values[f"{target}/accuracy"], "macro_f1": values[f"{target}/macro_f1"]}
    return {"scores": scores, "correct": {target: round(scores["accuracy"] * len(y))}, "test_examples": len(y),
            "majority": majority_class_accuracy(train_all[target][1], y)}, model


RUNS = {"synthetic": run_synthetic, "affinity": run_affinity, "partners": run_partners}


run = one_thread_run(RUNS)


def estimate_seconds(config: dict) -> float:
    """A run's time on one thread of a busy 2-core CPU: the mean of the study's own runs (2026-12-06)."""
    if config["kind"] == "synthetic":
        seconds = {"hard sharing": 6.4, DEEP_HARD: 6.9, "penalty": 6.3, "cross-stitch": 7.7, "MMoE": 7.3, "CGC": 8.5}
        return seconds[config["model"]] * config["steps"] / 800
    if config["kind"] == "affinity":
        return 6.1 * config["steps"] / 200
    return (0.5 if config["model"] == "heads" else 0.8 + 0.35 * (len(config["tasks"]) - 1)) * config["steps"] / 200


# ---------------------------------------------------------------- reading the results
def synthetic_scores(results: StudyResults) -> dict[str, dict[str, list[float]]]:
    """{``synthetic_label(model, p)``: {EXPLAINED, task 1, task 2: [R² per seed]}} of every model and p, plus
    the pseudo-methods ``"MMoE − hard sharing, p = …"`` (the per-seed differences), for ``evidence.family_intervals``."""
    labels = [synthetic_label(m, p) for m in MODELS for p in CORRELATIONS]
    scores = results.scores(labels)
    for p in CORRELATIONS:
        a, b = scores[synthetic_label("MMoE", p)], scores[synthetic_label("hard sharing", p)]
        scores[f"MMoE − hard sharing, p = {p:g}"] = {k: list(np.subtract(a[k], b[k])) for k in a}
    return scores


def _synthetic_row(results: StudyResults, model: str, correlation: float, seed: int) -> dict:
    rows = [r for r in results.select(synthetic_label(model, correlation)) if r["config"]["seed"] == seed]
    if not rows:
        raise ValueError(f"no {model} run at p = {correlation:g} with seed {seed}; the seeds are {results.seeds()}")
    return rows[0]


def alpha_history(results: StudyResults, correlation: float, seed: int, model: str = "cross-stitch") -> History:
    """The α a cross-stitch run (``model``: its name in the labels) recorded over training, as a ``History``
    (for ``plotting.plot_metric_curves``)."""
    curves = dict(_synthetic_row(results, model, correlation, seed)["metrics"]["alpha_curves"])
    steps = curves.pop("steps")
    return History(TASKS, eval_steps=steps, metrics=curves)


def mean_gates(results: StudyResults, seed: int) -> dict[str, dict[float, np.ndarray]]:
    """{"MMoE" | "CGC": {p: (T, E) mean gate weights on the test inputs}} of one seed (for ``plotting.plot_gates_at``)."""
    return {name: {p: np.array(_synthetic_row(results, name, p, seed)["metrics"]["mean_gates"]) for p in CORRELATIONS}
            for name in ("MMoE", "CGC")}


def affinity_matrices(results: StudyResults, step: str = "adam", kind: str = "affinity") -> np.ndarray:
    """The affinity runs' matrices (runs, T, T): Z with ``step`` ("adam" or "sgd"), or the cosines (kind="cosine")."""
    rows = results.select("affinity run")
    return np.array([row["metrics"]["cosine"] if kind == "cosine" else row["metrics"]["affinity"][step] for row in rows])


def predicted_partners(results: StudyResults, step: str = "adam") -> dict[str, float]:
    """{partner: Z_partner→target}, averaged over the affinity runs, best first."""
    tasks = results.select("affinity run")[0]["metrics"]["tasks"]
    mean = affinity_matrices(results, step).mean(axis=0)
    column = tasks.index(TARGET)
    z = {p: float(mean[tasks.index(p), column]) for p in PARTNERS}
    return dict(sorted(z.items(), key=lambda item: -item[1]))


def partner_scores(results: StudyResults, step: str = "adam") -> dict[str, dict[str, list[float]]]:
    """{run: {NEGATIVE_LOSS (millinats), "accuracy", "macro-F1" (both in %): [per seed]}} of the partner runs, with
    BEST and WORST the runs of the partners that ``step``'s affinity ranks first and last."""
    labels = [HEADS, ALONE, *(partner_label(p) for p in PARTNERS)]
    out = {}
    for label in labels:
        rows = results.select(label)
        out[label] = {NEGATIVE_LOSS: [-1000 * row["metrics"]["scores"]["loss"] for row in rows],
                      "accuracy": [100 * row["metrics"]["scores"]["accuracy"] for row in rows],
                      "macro-F1": [100 * row["metrics"]["scores"]["macro_f1"] for row in rows]}
    ranked = list(predicted_partners(results, step))
    out[BEST], out[WORST] = out[partner_label(ranked[0])], out[partner_label(ranked[-1])]
    return out


STUDY = Study(
    chapter="03",
    slug="soft_sharing_and_task_relations",
    question="does learned sharing beat hard sharing of the same size? does MMoE's advantage grow as tasks drift "
             "apart? does the lookahead affinity (Adam's step) predict the better partner?",
    grid=grid,
    run=run,
    estimate_seconds=estimate_seconds,
    primary=PRIMARY,
    default_seeds=DEFAULT_SEEDS,
)
