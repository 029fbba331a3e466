"""Chapter 05's study: dynamic task weighting against equal weighting and a tuned frozen-features baseline.

Every run is a small model on cached frozen MiniLM features (``features.frozen_features``) of the four
shipped tasks, 592 training texts each as in the chapter, mixed batches of 64 in which every task
appears, one torch thread:

- ``"heads on frozen features"``: one linear head per task on the features (no shared trunk, λ_t = 1);
- ``"equal"``, ``"uncertainty"``, ``"GradNorm"``, ``"DWA"``: the chapter's shared trunk (384 → 256, ReLU)
  with the weighting of ``mtl_tutorial.weighting`` (learned weights at the chapter's ``WEIGHTING_LR``,
  GradNorm's α = 1.5, DWA's window one epoch and τ = 2);
- the SGD control: ``"equal"`` and ``"uncertainty"`` trained with plain SGD instead of Adam (the weighting's
  own s_t still with Adam at ``WEIGHTING_LR``), to test the chapter's hypothesis that Adam divides a
  head's weight away.

Tuning, the same budget for every arm: ``VALIDATION_SHARE`` of each task's training texts (stratified,
``validation_split``) is held out; each arm runs at four step sizes (``LEARNING_RATES``) for
``STEPS`` steps (15 epochs), scored on validation and test after every epoch; a run's test score is the
one at its best validation epoch (early stopping), and ``tuned_scores`` picks each arm's step size by
its mean validation score over seeds. The test split is never read to choose anything.

Every run also records, per epoch, how far each task's head moved (‖Δθ_head‖ over the epoch) and the
mean λ_t, for the chapter's question of how much of a weight reaches its head's update.

Seeds: the pilot is the chapter's earlier 3-seed run (2026-12-02, lr 1e-3, 300 steps, no validation): the
paired difference uncertainty − equal in mean macro-F1 over the tasks had sd ``PILOT_DIFFERENCE_SD`` =
0.62 points (the largest of the three strategies); ``evidence.seeds_for_power(0.62, 0.8)`` = 7 seeds
detect a 0.8-point difference with 80 % power (``DEFAULT_SEEDS``).

``EXERCISES`` (``mtl-tutorial study 05 --exercises``): the worked solutions' runs at this set-up, on the same
seeds, so that each pairs with the chapter's arms seed by seed. An arm that changes one setting of a chapter arm
(GradNorm's α, DWA's τ, uncertainty weighting's own step size) runs at that arm's tuned step size
(``TUNED_LR``); an arm the study has no version of (static 1/ln C weights, the two-layer trunk) is tuned over
the same four step sizes. Every run stops on validation. ``EXERCISE_PRIMARY`` declares one question per
exercise before the runs (two for exercise 6); the solutions Holm-adjust everything else.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from mtl_tutorial.data import MultiTaskDataset, load_text_tasks, multitask_loader
from mtl_tutorial.evidence import Comparison, seeds_for_power
from mtl_tutorial.features import frozen_features
from mtl_tutorial.models import HardSharingModel, mlp
from mtl_tutorial.runtime import seed_everything
from mtl_tutorial.studies.feature_tasks import validation_split
from mtl_tutorial.studies.runner import Study, StudyResults, one_thread_run
from mtl_tutorial.training import evaluate, macro_f1, train
from mtl_tutorial.weighting import DynamicWeightAverage, EqualWeighting, GradNorm, StaticWeighting, UncertaintyWeighting

TASKS = ("sentiment", "condition", "supersense", "pos")
TRAIN_PER_TASK = 592          # every drug review; the same number of glosses, as in the chapter
VALIDATION_SHARE = 0.2        # of each task's training texts, held out to tune step size and stopping
PILOT_DIFFERENCE_SD = 0.62    # points of mean macro-F1: uncertainty − equal, the chapter's 3-seed pilot
SMALLEST_DIFFERENCE = 0.8     # points of mean macro-F1 the primary comparisons must resolve
DEFAULT_SEEDS = tuple(range(seeds_for_power(PILOT_DIFFERENCE_SD, SMALLEST_DIFFERENCE, minimum=5)))
WEIGHTING_LR = 0.01           # Adam's step size of the learned weights (s_t, θ), the chapter's value
LEARNING_RATES = {"Adam": (1e-3, 3e-3, 1e-2, 3e-2), "SGD": (0.03, 0.1, 0.3, 1.0)}
STEPS = 450                   # 15 epochs of the 474 texts per task left after validation
WEIGHTINGS = ("equal", "uncertainty", "GradNorm", "DWA")
INVERSE_LOG_CLASSES = "1/ln C"   # static λ_t = 1 / ln C_t (the worked solutions' exercise 4)
HEADS = "heads on frozen features"
ARMS = {HEADS: ("heads", "equal", "Adam"), **{w: ("trunk", w, "Adam") for w in WEIGHTINGS},
        "equal (SGD)": ("trunk", "equal", "SGD"), "uncertainty (SGD)": ("trunk", "uncertainty", "SGD")}
MEAN = None                   # a Comparison's task for the per-seed mean over the tasks

PRIMARY = (
    Comparison("uncertainty", "equal", MEAN),   # each strategy − equal weighting, mean macro-F1 over the tasks,
    Comparison("GradNorm", "equal", MEAN),      # every arm at its own tuned step size and stopping epoch
    Comparison("DWA", "equal", MEAN),
)


def run_label(arm: str, lr: float) -> str:
    """E.g. ``"uncertainty, lr = 0.003"``."""
    return f"{arm}, lr = {lr:g}"


def config(arm: str, lr: float, seed: int, fast: bool = False) -> dict:
    model, weighting, optimizer = ARMS[arm]
    return {"label": run_label(arm, lr), "arm": arm, "seed": seed, "model": model, "weighting": weighting,
            "optimizer": optimizer, "lr": lr, "weighting_lr": WEIGHTING_LR, "steps": 20 if fast else STEPS,
            "batch_size": 64, "width": 256, "gradnorm_alpha": 1.5, "dwa_temperature": 2.0,
            "validation_share": VALIDATION_SHARE, "max_per_task": 64 if fast else TRAIN_PER_TASK}


def grid(seeds, fast: bool = False) -> list[dict]:
    """Seeds outermost (an interrupted study has whole seeds); fast: 20 steps on 64 texts per task."""
    return [config(arm, lr, seed, fast) for seed in seeds for arm, (_, _, opt) in ARMS.items()
            for lr in LEARNING_RATES[opt]]


@functools.lru_cache(maxsize=2)
def feature_data(max_per_task: int, validation_share: float) -> tuple[dict, dict, dict, dict]:
    """(train, validation, test, num_classes): task -> (frozen MiniLM features (N, 384), labels (N,)).
    Validation is carved from the first ``max_per_task`` training texts (stratified, seed 0); test is the
    whole test split."""
    train_tasks = load_text_tasks(list(TASKS), split="train", max_per_task=max_per_task)
    test_tasks = load_text_tasks(list(TASKS), split="test")
    train_data, validation = {}, {}
    for name, task in train_tasks.items():
        x = frozen_features(task.texts, progress=False)
        rest, held_out = validation_split(task.labels, validation_share)
        train_data[name], validation[name] = (x[rest], task.labels[rest]), (x[held_out], task.labels[held_out])
    test = {name: (frozen_features(task.texts, progress=False), task.labels) for name, task in test_tasks.items()}
    return train_data, validation, test, {name: task.num_classes for name, task in train_tasks.items()}


class SGDWithAdamWeights:
    """Plain SGD for the model and Adam for a weighting's own parameters, as one optimizer for ``train``
    (so that the SGD control changes how the model steps, not how s_t is learned)."""

    def __init__(self, model_parameters, lr: float, weighting_parameters=(), weighting_lr: float = WEIGHTING_LR) -> None:
        self.parts = [torch.optim.SGD(list(model_parameters), lr=lr)]
        weighting_parameters = list(weighting_parameters)
        if weighting_parameters:
            self.parts.append(torch.optim.Adam(weighting_parameters, lr=weighting_lr))
        self.param_groups = [group for part in self.parts for group in part.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for part in self.parts:
            part.step()


def make_weighting(config: dict, steps_per_epoch: int, model: HardSharingModel | None = None,
                   num_classes: dict | None = None):
    """The weighting of ``config``; GradNorm's W is the trunk's first layer with ``"shared_layer": "first"``
    (else the last, its default), the static ``"1/ln C"`` needs each task's ``num_classes``."""
    name = config["weighting"]
    if name == "equal":
        return EqualWeighting(TASKS)
    if name == "uncertainty":
        return UncertaintyWeighting(TASKS, lr=config["weighting_lr"])
    if name == "GradNorm":
        shared = [model.trunk[0].weight] if config.get("shared_layer") == "first" else None
        return GradNorm(TASKS, alpha=config["gradnorm_alpha"], shared_parameters=shared, lr=config["weighting_lr"])
    if name == "DWA":
        return DynamicWeightAverage(TASKS, window=steps_per_epoch, temperature=config["dwa_temperature"])
    if name == INVERSE_LOG_CLASSES:
        return StaticWeighting({t: 1 / float(np.log(num_classes[t])) for t in TASKS})
    raise ValueError(f"unknown weighting {name!r}; weightings are: {', '.join((*WEIGHTINGS, INVERSE_LOG_CLASSES))}")


def head_vector(model: HardSharingModel, task: str) -> torch.Tensor:
    """The parameters of ``task``'s head as one flat vector (a copy)."""
    return torch.cat([p.detach().flatten() for p in model.heads[task].parameters()]).clone()


def best_epoch(validation_curve: Sequence[float]) -> int:
    """The index of the best (highest) validation score; the earliest among ties (early stopping)."""
    if len(validation_curve) == 0:
        raise ValueError("the validation curve is empty: evaluate at least once (eval_every)")
    return int(np.argmax(np.asarray(validation_curve, dtype=float)))


def majority_macro_f1(train_labels: torch.Tensor, test_labels: torch.Tensor, num_classes: int) -> float:
    """Macro-F1 of always predicting the most frequent training class."""
    always = torch.full_like(test_labels, int(torch.bincount(train_labels).argmax()))
    return float(macro_f1(nn.functional.one_hot(always, num_classes).float(), test_labels))


def run_once(config: dict) -> tuple[dict, nn.Module]:
    train_data, validation, test, num_classes = feature_data(config["max_per_task"], config["validation_share"])
    seed_everything(config["seed"])
    width = 384 if config["model"] == "heads" else config["width"]
    trunk = nn.Identity() if config["model"] == "heads" else mlp(384, *[width] * config.get("trunk_layers", 1))
    model = HardSharingModel(trunk, {t: nn.Linear(width, num_classes[t]) for t in TASKS})
    loader = multitask_loader(MultiTaskDataset(train_data), config["batch_size"], strategy="uniform", mixed=True,
                              seed=config["seed"])
    steps_per_epoch = len(loader)
    weighting = make_weighting(config, steps_per_epoch, model, num_classes)
    optimizer = None
    if config["optimizer"] == "SGD":
        optimizer = SGDWithAdamWeights(model.parameters(), config["lr"], weighting.parameters(), config["weighting_lr"])
    previous = {t: head_vector(model, t) for t in TASKS}

    def eval_fn(m):
        out = {f"validation/{k}": v for k, v in evaluate(m, validation, {"macro_f1": macro_f1}).items()}
        out |= {f"test/{k}": v for k, v in evaluate(m, test, {"macro_f1": macro_f1, "correct": _correct}).items()}
        for t in TASKS:
            now = head_vector(m, t)
            out[f"head step/{t}"] = float((now - previous[t]).norm())
            previous[t] = now
        return out

    history = train(model, loader, dict.fromkeys(TASKS, nn.functional.cross_entropy), config["steps"], lr=config["lr"],
                    optimizer=optimizer, weighting=weighting, eval_fn=eval_fn, eval_every=steps_per_epoch, progress=False)
    m = history.metrics
    validation_curve = np.mean([m[f"validation/{t}/macro_f1"] for t in TASKS], axis=0)
    best = best_epoch(validation_curve)
    edges = [0, *history.eval_steps]
    weights = {t: [float(np.nanmean(history.task_weights[t][a:b])) for a, b in zip(edges[:-1], edges[1:])] for t in TASKS}
    losses = {t: [float(np.nanmean(history.losses[t][a:b])) for a, b in zip(edges[:-1], edges[1:])] for t in TASKS}
    metrics = {
        "scores": {t: m[f"test/{t}/macro_f1"][best] for t in TASKS},
        "correct": {t: round(m[f"test/{t}/correct"][best]) for t in TASKS},
        "validation": float(validation_curve[best]),
        "validation_curve": [round(float(v), 5) for v in validation_curve],
        "stopped_at": history.eval_steps[best],
        "steps_per_epoch": steps_per_epoch,
        "eval_steps": list(history.eval_steps),
        "head_steps": {t: [round(v, 6) for v in m[f"head step/{t}"]] for t in TASKS},
        "mean_weights": {t: [round(v, 5) for v in weights[t]] for t in TASKS},
        "train_losses": {t: [round(v, 5) for v in losses[t]] for t in TASKS},     # mean training loss per epoch
        "final_weights": {t: round(float(history.task_weights[t][-1]), 5) for t in TASKS},   # λ_t at the last step
        "test_examples": {t: len(test[t][1]) for t in TASKS},
        "majority": {t: majority_macro_f1(train_data[t][1], test[t][1], num_classes[t]) for t in TASKS},
    }
    if isinstance(weighting, UncertaintyWeighting):   # σ_t² = e^(s_t) at the end of training
        metrics["variances"] = {t: round(float(v), 6) for t, v in zip(weighting.tasks, weighting.log_variances.detach().exp())}
    return metrics, model


def _correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The number of correct predictions (a float tensor, for ``evaluate``)."""
    return (logits.argmax(dim=1) == labels).sum().float()


run = one_thread_run(run_once)


def estimate_seconds(config: dict) -> float:
    """A run's time on one thread of a busy 2-core CPU (the mean of this study's full run, 2026-12-06, beside
    three other studies: 2.7 s for heads, 3.8-5.2 s for a trunk, 7.5 s with GradNorm, at 450 steps)."""
    per_step = {"heads": 0.006, "trunk": 0.010}[config["model"]] * (1.6 if config["weighting"] == "GradNorm" else 1.0)
    return per_step * config["steps"] * (1.2 if config.get("trunk_layers", 1) > 1 else 1.0) + 0.3


# ---------------------------------------------------------------- reading the results

def tuned_scores(results: StudyResults, arms: Sequence[str] = tuple(ARMS)) -> tuple[dict, dict]:
    """({arm: {task: test macro-F1 per seed}}, {arm: the label chosen}): each arm at the step size with the
    highest validation score (at its early-stopping epoch) averaged over seeds; test is not read to choose."""
    scores, chosen = {}, {}
    for arm in arms:
        lrs = EXERCISE_ARMS[arm].lrs if arm in EXERCISE_ARMS else LEARNING_RATES[ARMS[arm][2]]
        labels = [run_label(arm, lr) for lr in lrs]
        means = {label: float(np.mean([row["metrics"]["validation"] for row in results.select(label)])) for label in labels}
        chosen[arm] = max(means, key=means.get)
        scores[arm] = {t: [row["metrics"]["scores"][t] for row in results.select(chosen[arm])] for t in TASKS}
    return scores, chosen


STUDY = Study(
    chapter="05",
    slug="dynamic_task_weighting",
    question="does a dynamic weighting beat equal weighting once every arm's step size and stopping are tuned?",
    grid=grid,
    run=run,
    estimate_seconds=estimate_seconds,
    primary=PRIMARY,
    default_seeds=DEFAULT_SEEDS,
)


# ---------------------------------------------------------------- the worked solutions' runs

# The step sizes this study chose on validation (``tuned_scores`` of its committed results, 2026-12-06;
# a test checks that they still do). An exercise arm that changes one setting of a chapter arm runs at
# that arm's tuned step size, so that only the setting changes.
TUNED_LR = {"uncertainty": 3e-3, "GradNorm": 1e-2, "DWA": 1e-2}


class ExerciseArm(NamedTuple):
    """A solutions' arm: the chapter arm it starts from, the settings it changes, the step sizes it runs at."""

    base: str
    changes: dict
    lrs: tuple[float, ...]


ALL_ADAM = LEARNING_RATES["Adam"]   # an arm the chapter's study has no version of is tuned like its arms
EXERCISE_ARMS = {
    "GradNorm, α = 0": ExerciseArm("GradNorm", {"gradnorm_alpha": 0.0}, (TUNED_LR["GradNorm"],)),          # exercise 1
    "GradNorm, α = 3": ExerciseArm("GradNorm", {"gradnorm_alpha": 3.0}, (TUNED_LR["GradNorm"],)),
    "DWA, τ = 0.5": ExerciseArm("DWA", {"dwa_temperature": 0.5}, (TUNED_LR["DWA"],)),                     # exercise 2
    "uncertainty, weighting_lr = lr": ExerciseArm("uncertainty", {"weighting_lr": TUNED_LR["uncertainty"]},  # exercise 3
                                                  (TUNED_LR["uncertainty"],)),
    INVERSE_LOG_CLASSES: ExerciseArm("equal", {"weighting": INVERSE_LOG_CLASSES}, ALL_ADAM),                 # exercise 4
    "equal, two layers": ExerciseArm("equal", {"trunk_layers": 2}, ALL_ADAM),                               # exercise 6
    "uncertainty, two layers": ExerciseArm("uncertainty", {"trunk_layers": 2}, ALL_ADAM),
    "GradNorm, two layers": ExerciseArm("GradNorm", {"trunk_layers": 2}, ALL_ADAM),                         # exercises 5, 6
    "GradNorm, two layers, W = first layer": ExerciseArm("GradNorm", {"trunk_layers": 2, "shared_layer": "first"}, ALL_ADAM),
}
# Exercise 3 compares σ_t² with the training loss, which the chapter's runs did not record: its reference,
# the chapter's uncertainty weighting at its tuned step size, runs again here (the same config as the study's).
RERUN_ARMS = ("uncertainty",)

EXERCISE_PRIMARY = {   # one question per exercise, declared before the runs; everything else is Holm-adjusted
    1: (Comparison("GradNorm, α = 3", "GradNorm, α = 0", "sentiment"),),   # does pushing the slow task harder pay?
    2: (Comparison("DWA, τ = 0.5", "DWA", MEAN),),
    3: (Comparison("uncertainty, weighting_lr = lr", "uncertainty", MEAN),),
    4: (Comparison(INVERSE_LOG_CLASSES, "equal", MEAN),),
    5: (Comparison("GradNorm, two layers, W = first layer", "GradNorm, two layers", MEAN),),
    6: (Comparison("uncertainty − equal, two layers", "uncertainty − equal, one layer", MEAN),   # does a deeper
        Comparison("GradNorm − equal, two layers", "GradNorm − equal, one layer", MEAN)),        # trunk widen the gap?
}
GAP_ARMS = {"one layer": ("", "equal"), "two layers": (", two layers", "equal, two layers")}


def exercise_config(arm: str, lr: float, seed: int, fast: bool = False) -> dict:
    """A run of ``EXERCISE_ARMS[arm]`` (or of a chapter arm in ``RERUN_ARMS``, its config unchanged)."""
    if arm in RERUN_ARMS:
        return config(arm, lr, seed, fast)
    spec = EXERCISE_ARMS[arm]
    return config(spec.base, lr, seed, fast) | {"label": run_label(arm, lr), "arm": arm, **spec.changes}


def exercise_grid(seeds, fast: bool = False) -> list[dict]:
    """The exercises' runs, seeds outermost (fast: 20 steps on 64 texts per task, as ``grid``)."""
    return [exercise_config(arm, lr, seed, fast) for seed in seeds
            for arm, lrs in [*((a, s.lrs) for a, s in EXERCISE_ARMS.items()), *((a, (TUNED_LR[a],)) for a in RERUN_ARMS)]
            for lr in lrs]


def with_gaps(scores: dict) -> dict:
    """``scores`` plus exercise 6's per-seed gaps "uncertainty − equal, one layer" (… two layers, and GradNorm's)
    as pseudo-arms, so that a difference of gaps is one ``Comparison``."""
    gaps = {f"{method} − equal, {depth}": {t: list(np.subtract(scores[method + suffix][t], scores[equal][t])) for t in TASKS}
            for method in ("uncertainty", "GradNorm") for depth, (suffix, equal) in GAP_ARMS.items()}
    return scores | gaps


EXERCISES = Study(
    chapter="05",
    slug="dynamic_task_weighting_exercises",
    question="the worked solutions' runs: GradNorm's α, DWA's τ, uncertainty's step size, 1/ln C weights, "
             "GradNorm's W and a two-layer trunk, at the study's set-up",
    grid=exercise_grid,
    run=run,
    estimate_seconds=estimate_seconds,
    primary=tuple(c for group in EXERCISE_PRIMARY.values() for c in group),
    default_seeds=DEFAULT_SEEDS,
)
