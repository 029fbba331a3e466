"""Chapter 06's study: gradient aggregators on the four text tasks, fixed-weights controls, and the
conflict rate of task pairs against a null of two halves of one task.

All runs train a shared trunk (384 → 256, ReLU) with one linear head per task on frozen MiniLM features
(cached), mixed batches of 64 whose examples draw their task uniformly (about 16 per task in every
batch, ``_loader``), Adam at lr 1e-3 for 300 steps: at all 592 + 592 + 2,200 + 2,200 training examples
that is ≥ 2.2 epochs of every task (8 of the review tasks). Nothing is tuned: every
run, baselines included, has the chapter's step size and step count, fixed before the study (the same
budget). Test macro-F1 (and accuracy) on the whole test splits. Four kinds of run (``config["kind"]``):

- ``"aggregate"``: ``GradientAggregation(method, mode)``, method ∈ {equal, pcgrad, mgda, cagrad (c = 0.5)},
  mode ∈ {parameters, representation}. Records the mean α_t over training (for the controls), α_t and
  ‖g_t‖ as means over ``WINDOW_COUNT`` windows of the run, and each task pair's mean cosine and conflict rate (share of
  steps with cos < 0); equal weighting's runs also keep the windowed cosine curves.
- ``"static"``: the control "is it the geometry or the re-weighting?": a plain Σ_t λ_t L_t whose fixed λ_t
  are the mean α_t of the same seed's MGDA or CAGrad run (parameters mode; recomputed, or cached within
  the process, by ``mean_weights``).
- ``"heads"``: heads on frozen features (no trunk, equal weighting); it also stores the majority class.
- ``"null"``: equal weighting on eight half-tasks (two random halves of each task share its head, batches
  of 128 so every half-task has 16 examples per batch): cos(half 1, half 2) of one task is what gradient
  noise alone gives; cos between halves of different tasks is the cross-task rate in the same run.

Seeds: the pilot is the chapter's earlier 3-seed run (commit 69bff16, 592 examples per task): the paired
differences had sd 0.25 pts (CAGrad − equal) and 0.52 pts (static MGDA weights − MGDA) of mean macro-F1;
``seeds_for_power(0.52, 0.6)`` = 9 seeds detect 0.6 pts with 80 % power (``DEFAULT_SEEDS``).
"""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn

from mtl_tutorial.aggregation import GradientAggregation
from mtl_tutorial.data import MultiTaskDataset, multitask_loader
from mtl_tutorial.evidence import Comparison, seeds_for_power
from mtl_tutorial.models import HardSharingModel, mlp
from mtl_tutorial.runtime import seed_everything
from mtl_tutorial.studies.feature_tasks import TASKS, feature_data   # the four tasks, cached features
from mtl_tutorial.studies.runner import Study, StudyResults, one_thread_run
from mtl_tutorial.training import evaluate, macro_f1, train

PAIRS = tuple((a, b) for i, a in enumerate(TASKS) for b in TASKS[i + 1:])
SAME_SOURCE = (("sentiment", "condition"), ("supersense", "pos"))   # the pairs that label the same texts
METHODS = ("equal", "pcgrad", "mgda", "cagrad")
MODES = ("parameters", "representation")
CAGRAD_C = 0.5
WINDOW_COUNT = 30            # curves are stored as means over this many windows of the run
PILOT_DIFFERENCE_SD = 0.52   # pts of mean macro-F1: static MGDA weights − MGDA, the chapter's 3-seed pilot
SMALLEST_DIFFERENCE = 0.6    # pts of mean macro-F1 the primary comparisons must resolve
DEFAULT_SEEDS = tuple(range(seeds_for_power(PILOT_DIFFERENCE_SD, SMALLEST_DIFFERENCE, minimum=5)))

HEADS = "heads on frozen features"
CROSS, NULL = "different tasks", "halves of one task (null)"
ALL_PAIRS = "all pairs"   # the key of the pooled pairs in ``conflict_scores``


def label(method: str, mode: str = "parameters") -> str:
    """``"cagrad/parameters"``."""
    return f"{method}/{mode}"


def static_label(method: str) -> str:
    """``"static CAGrad weights"``: the fixed-weights control of ``method``."""
    return f"static {method.upper() if method == 'mgda' else 'CAGrad' if method == 'cagrad' else method} weights"


def pair_key(a: str, b: str) -> str:
    return f"{a} · {b}"


PRIMARY = (
    Comparison(label("cagrad"), label("equal")),           # does CAGrad beat equal weighting (mean macro-F1)?
    Comparison(label("cagrad"), static_label("cagrad")),   # ... by its geometry, beyond its average re-weighting?
    Comparison(CROSS, NULL, ALL_PAIRS),                    # do different tasks conflict more than noise alone gives?
)


def _base(kind: str, label_: str, seed: int, fast: bool) -> dict:
    return {"kind": kind, "label": label_, "seed": seed, "tasks": list(TASKS), "width": 256, "batch_size": 64,
            "sampling": "uniform", "steps": 30 if fast else 300, "lr": 1e-3, "max_per_task": 64 if fast else None}


def aggregate_config(method: str, mode: str, seed: int, fast: bool = False) -> dict:
    return _base("aggregate", label(method, mode), seed, fast) | {"method": method, "mode": mode, "c": CAGRAD_C}


def grid(seeds, fast: bool = False) -> list[dict]:
    """Seeds outermost (an interrupted study has whole seeds); fast: 30 steps on 64 examples per task."""
    configs = []
    for seed in seeds:
        configs += [aggregate_config(method, mode, seed, fast) for mode in MODES for method in METHODS]
        configs += [_base("static", static_label(m), seed, fast) | {"weights_of": m, "c": CAGRAD_C} for m in ("mgda", "cagrad")]
        configs.append(_base("heads", HEADS, seed, fast))
        configs.append(_base("null", "null: halves of each task", seed, fast))
    return configs


# ---------------------------------------------------------------- data and models

def _model(config: dict, num_classes: dict) -> HardSharingModel:
    seed_everything(config["seed"])
    if config["kind"] == "heads":
        return HardSharingModel(nn.Identity(), {t: nn.Linear(384, num_classes[t]) for t in config["tasks"]})
    return HardSharingModel(mlp(384, config["width"]), {t: nn.Linear(config["width"], num_classes[t]) for t in config["tasks"]})


def windowed(values, count: int = WINDOW_COUNT) -> list[float]:
    """The means of ``values`` (K,) over ``count`` consecutive windows of (nearly) equal length, rounded
    to 5 digits (a stored curve); fewer windows when K < count."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"values must be a non-empty 1-d sequence, got shape {values.shape}")
    return [round(float(chunk.mean()), 5) for chunk in np.array_split(values, min(count, len(values)))]


def _pair_stats(aggregation: GradientAggregation, a: str, b: str, curve: bool = False) -> dict:
    cosines = aggregation.cosine_curve(a, b)[1]
    stats = {"mean": float(cosines.mean()), "conflict": float(np.mean(cosines < 0))}
    return stats | ({"windows": windowed(cosines)} if curve else {})


def _scores(model: nn.Module, test_data: dict) -> dict:
    model.eval()
    with torch.no_grad():
        logits = {t: model(x, t) for t, (x, _) in test_data.items()}
    correct = {t: int((logits[t].argmax(1) == y).sum()) for t, (_, y) in test_data.items()}
    f1 = evaluate(model, test_data, {"macro_f1": macro_f1})
    return {"scores": {t: f1[f"{t}/macro_f1"] for t in test_data}, "correct": correct,
            "accuracy": {t: correct[t] / len(y) for t, (_, y) in test_data.items()},
            "test_examples": {t: len(y) for t, (_, y) in test_data.items()}}


def _loader(data: dict, config: dict, batch_size: int | None = None):
    """Mixed batches whose examples draw their task uniformly and i.i.d. (``replacement=True``: each task's
    pass over its examples continues across epochs), so every batch holds about batch_size / T examples of
    every task. Without replacement an epoch visits every example once, and once the two review tasks
    (592 examples) run out, its last batches hold only the two WordNet tasks (2,200)."""
    return multitask_loader(MultiTaskDataset(data), batch_size or config["batch_size"], strategy=config["sampling"], mixed=True,
                            seed=config["seed"], replacement=True, num_batches=config["steps"])


def _train_aggregate(config: dict) -> tuple[HardSharingModel, GradientAggregation, object]:
    train_data, _, num_classes = feature_data(config["max_per_task"])
    model = _model(config, num_classes)
    aggregation = GradientAggregation(model, config["method"], mode=config["mode"], c=config["c"], seed=config["seed"])
    history = train(model, _loader(train_data, config), dict.fromkeys(config["tasks"], nn.functional.cross_entropy),
                    config["steps"], lr=config["lr"], weighting=aggregation, progress=False)
    aggregation.remove()
    return model, aggregation, history


_MEAN_WEIGHTS: dict[str, dict[str, float]] = {}   # this process's aggregator runs: config -> mean α_t


def _key(config: dict) -> str:
    return json.dumps({k: v for k, v in config.items() if k != "label"}, sort_keys=True)


def mean_weights(config: dict) -> dict[str, float]:
    """The mean α_t over training of the aggregator run ``config`` (kind "aggregate"): remembered from
    this process's run of it, else trained again (its training is deterministic)."""
    if config.get("kind") != "aggregate":
        raise ValueError(f"mean_weights needs an aggregator run's config (kind 'aggregate'), got kind {config.get('kind')!r}")
    if _key(config) not in _MEAN_WEIGHTS:
        run_aggregate(config)
    return dict(_MEAN_WEIGHTS[_key(config)])


def run_aggregate(config: dict) -> tuple[dict, nn.Module]:
    model, aggregation, history = _train_aggregate(config)
    tasks = config["tasks"]
    alpha = {t: history.weight_curve(t)[1] for t in tasks}
    _MEAN_WEIGHTS[_key(config)] = {t: float(alpha[t].mean()) for t in tasks}
    metrics = _scores(model, feature_data(config["max_per_task"])[1]) | {
        "alpha_mean": dict(_MEAN_WEIGHTS[_key(config)]),
        "alpha_windows": {t: windowed(alpha[t]) for t in tasks},
        "norm_windows": {t: windowed(aggregation.norm_curve(t)[1]) for t in tasks},
        "pairs": {pair_key(a, b): _pair_stats(aggregation, a, b, curve=config["method"] == "equal") for a, b in PAIRS},
    }
    return metrics, model


def run_static(config: dict) -> tuple[dict, nn.Module]:
    source = aggregate_config(config["weights_of"], "parameters", config["seed"]) | {
        k: config[k] for k in ("steps", "max_per_task", "lr", "batch_size", "width", "c", "sampling")}
    weights = mean_weights(source)
    train_data, test_data, num_classes = feature_data(config["max_per_task"])
    model = _model(config, num_classes)
    train(model, _loader(train_data, config), dict.fromkeys(config["tasks"], nn.functional.cross_entropy), config["steps"],
          lr=config["lr"], weighting=weights, progress=False)
    return _scores(model, test_data) | {"weights": weights}, model


def run_heads(config: dict) -> tuple[dict, nn.Module]:
    train_data, test_data, num_classes = feature_data(config["max_per_task"])
    model = _model(config, num_classes)
    train(model, _loader(train_data, config), dict.fromkeys(config["tasks"], nn.functional.cross_entropy), config["steps"],
          lr=config["lr"], progress=False)
    majority = {}
    for t, (_, y) in test_data.items():
        always = torch.full_like(y, int(torch.bincount(train_data[t][1]).argmax()))
        majority[t] = float(macro_f1(nn.functional.one_hot(always, num_classes[t]).float(), y))
    return _scores(model, test_data) | {"majority": majority}, model


def run_null(config: dict) -> tuple[dict, None]:
    train_data, _, num_classes = feature_data(config["max_per_task"])
    seed_everything(config["seed"])
    generator = torch.Generator().manual_seed(config["seed"])
    heads = {t: nn.Linear(config["width"], num_classes[t]) for t in config["tasks"]}
    halves, half_heads = {}, {}
    for t in config["tasks"]:
        x, y = train_data[t]
        for half, part in zip(("1", "2"), torch.randperm(len(y), generator=generator).chunk(2)):
            halves[f"{t} {half}"], half_heads[f"{t} {half}"] = (x[part], y[part]), heads[t]   # one head per task
    model = HardSharingModel(mlp(384, config["width"]), half_heads)
    aggregation = GradientAggregation(model, "equal", mode="parameters", seed=config["seed"])
    train(model, _loader(halves, config, 2 * config["batch_size"]), dict.fromkeys(halves, nn.functional.cross_entropy),
          config["steps"], lr=config["lr"], weighting=aggregation, progress=False)
    null = {t: _pair_stats(aggregation, f"{t} 1", f"{t} 2") for t in config["tasks"]}
    cross = {}
    for a, b in PAIRS:   # the four combinations of a half of a with a half of b, averaged
        combos = [_pair_stats(aggregation, f"{a} {i}", f"{b} {j}") for i in "12" for j in "12"]
        cross[pair_key(a, b)] = {k: float(np.mean([c[k] for c in combos])) for k in ("mean", "conflict")}
    return {"halves": null, "pairs": cross}, None


run = one_thread_run({"aggregate": run_aggregate, "static": run_static, "heads": run_heads, "null": run_null})


def estimate_seconds(config: dict) -> float:
    """A run's time on one thread of a busy 2-core CPU: the mean of the study's own runs (9 seeds, 2026-12-06,
    the machine shared with other jobs). A static control reuses the mean α of its aggregator run, which the
    grid runs first in the same process."""
    per_step = {"heads": 0.0015, "static": 0.004, "null": 0.047}.get(config["kind"])
    if per_step is None:
        per_step = 0.02 if config["mode"] == "parameters" else 0.008
    return per_step * config["steps"] + 1


# ---------------------------------------------------------------- reading the results

def f1_scores(results: StudyResults, labels: list[str] | None = None) -> dict[str, dict[str, list[float]]]:
    """{label: {task: test macro-F1 per seed}} of the text runs (all but the null) for ``evidence``."""
    text = [lab for lab in results.labels() if results.select(lab)[0]["config"]["kind"] != "null"]
    return results.scores(text if labels is None else labels)


def conflict_scores(results: StudyResults, statistic: str = "conflict") -> dict[str, dict[str, list[float]]]:
    """The null run's pairs as two "methods" for ``evidence.family_intervals``, per seed:
    {CROSS: {ALL_PAIRS: mean over the 6 task pairs, "a · b": that pair}, NULL: {ALL_PAIRS: mean over the
    4 tasks' halves, "a · b": the mean of the halves of a and of b}}. statistic: "conflict" (share of
    steps with cos < 0) or "mean" (the mean cosine)."""
    if statistic not in ("conflict", "mean"):
        raise ValueError(f"statistic must be 'conflict' (share of steps with cos < 0) or 'mean' (cosine), got {statistic!r}")
    rows = [row for lab in results.labels() for row in results.select(lab) if row["config"]["kind"] == "null"]
    if not rows:
        raise ValueError("the results hold no null run (kind 'null'); run the study's full grid")
    rows.sort(key=lambda row: row["config"]["seed"])
    cross = {pair_key(a, b): [row["metrics"]["pairs"][pair_key(a, b)][statistic] for row in rows] for a, b in PAIRS}
    halves = {t: np.array([row["metrics"]["halves"][t][statistic] for row in rows]) for t in TASKS}
    null = {pair_key(a, b): list((halves[a] + halves[b]) / 2) for a, b in PAIRS}
    return {CROSS: {ALL_PAIRS: list(np.mean(list(cross.values()), axis=0)), **cross},
            NULL: {ALL_PAIRS: list(np.mean(list(halves.values()), axis=0)), **null}}


def window_curves(results: StudyResults, run_label: str, key: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(window centres in steps (W,), {name: (seeds, W)}) of a stored windowed curve: key "alpha_windows",
    "norm_windows" (name = task), or "pairs" (name = "a · b", equal weighting's cosines)."""
    rows = results.select(run_label)
    centres = np.array([chunk.mean() + 1 for chunk in np.array_split(np.arange(rows[0]["config"]["steps"]), WINDOW_COUNT)])
    if key == "pairs":
        names = list(rows[0]["metrics"]["pairs"])
        if "windows" not in rows[0]["metrics"]["pairs"][names[0]]:
            raise ValueError(f"run {run_label!r} stored no cosine curves (only equal weighting's runs do)")
        curves = {n: np.array([row["metrics"]["pairs"][n]["windows"] for row in rows]) for n in names}
    else:
        curves = {t: np.array([row["metrics"][key][t] for row in rows]) for t in rows[0]["config"]["tasks"]}
    width = next(iter(curves.values())).shape[1]
    return (centres if width == len(centres) else np.arange(1, width + 1)), curves


STUDY = Study(
    chapter="06",
    slug="gradient_alignment",
    question="does CAGrad beat equal weighting, and by its geometry or its re-weighting? do tasks conflict beyond noise?",
    grid=grid,
    run=run,
    estimate_seconds=estimate_seconds,
    primary=PRIMARY,
    default_seeds=DEFAULT_SEEDS,
)


def first_and_last_tenth(results: StudyResults, run_label: str, key: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{task: (mean over the first tenth of the run, mean over the last tenth)}, each (seeds,), of a stored
    windowed curve (key "alpha_windows" or "norm_windows"): how α_t or ‖g_t‖ moved over training."""
    _, curves = window_curves(results, run_label, key)
    tenth = max(1, next(iter(curves.values())).shape[1] // 10)
    return {t: (c[:, :tenth].mean(axis=1), c[:, -tenth:].mean(axis=1)) for t, c in curves.items()}
