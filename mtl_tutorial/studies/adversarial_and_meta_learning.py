"""Chapter 11's study: the adversarial ablation read by a post-hoc probe, meta-learning on sinusoids,
and meta-learned against multi-task trunks on a held-out text task.

Three kinds of run (``config["kind"]``), all small models on frozen MiniLM features or on synthetic
tasks, one torch thread each:

- ``"adversarial"``: heads on frozen features, hard sharing, and the shared-private model with the
  discriminator trained on the shared features and each of gradient reversal (λ ramped to 1) and the
  orthogonality penalty (γ) switched on or off: neither, reversal only, orthogonality only, both. Every
  run scores its test accuracy per task, the discriminator over training and at the end (accuracy and
  how sure it is), and a post-hoc probe: a fresh classifier trained on the final, frozen shared features
  of the training examples (``adversarial.post_hoc_probe``), linear and an MLP.
- ``"sinusoid"``: an initialisation (random, multi-task, Reptile, first-order MAML) meta-trained on
  y = A sin(x − φ) and scored after 1, 5 and 20 adaptation steps on 100 held-out tasks; it also stores
  its function before adaptation and after 5 steps on the first held-out task, on ``SINUSOID_GRID``.
- ``"few-shot"``: a trunk (none, random, multi-task, Reptile) trained on a family of text tasks, then
  adapted to a held-out task from k examples per class, with trunk and head adapted, or the head only
  on the frozen trunk (the control for "the trunk's parameters overfit a few examples"), after the
  inner steps Reptile trained with (10) and after 50. The multi-task learning rate and Reptile's meta
  learning rate are each tuned over three values on a validation split carved from the held-out task's
  training split (``validation_split``; supports come from the rest), never on its test split:
  ``few_shot_scores`` picks them.

Seeds: the pilot is the chapter's earlier 5-seed run (2026-12-06): the paired difference of mean accuracy
between the adversarial shared-private model and the same model without the fight had sd
``PILOT_DIFFERENCE_SD`` = 0.39 points; ``evidence.seeds_for_power(0.39, 0.4)`` = 10 seeds detect a
0.4-point change in mean accuracy with 80 % power (``DEFAULT_SEEDS``). The few-shot pilot difference
(meta-learned − multi-task, k = 4) had sd 0.76 points, so 10 seeds resolve 1 point there.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from mtl_tutorial.adversarial import (
    AdversarialObjective, ConfusionObjective, SharedPrivateModel, discriminator_accuracy, post_hoc_probe,
)
from mtl_tutorial.data import MultiTaskDataset
from mtl_tutorial.evidence import Comparison, seeds_for_power
from mtl_tutorial.meta import ClassificationEpisodes, SinusoidTasks, adapt, few_shot_accuracy, meta_train
from mtl_tutorial.models import HardSharingModel, mlp
from mtl_tutorial.runtime import seed_everything
from mtl_tutorial.schedules import schedule_loader
from mtl_tutorial.studies.feature_tasks import TASKS, feature_data, validation_split
from mtl_tutorial.studies.runner import Study, StudyResults, one_thread_run
from mtl_tutorial.training import accuracy, evaluate, majority_class_accuracy, train

PILOT_DIFFERENCE_SD = 0.39   # points: adversarial − no adversary, mean accuracy, the chapter's 5-seed pilot
SMALLEST_DIFFERENCE = 0.4    # points of mean accuracy the adversarial primary comparison must resolve
DEFAULT_SEEDS = tuple(range(seeds_for_power(PILOT_DIFFERENCE_SD, SMALLEST_DIFFERENCE, minimum=5)))

# (a) the ablation: name -> (model, reversal λ, orthogonality γ)
ORTHOGONALITY = 1e-4          # γ of the raw penalty ‖S_tᵀ P_t‖²_F (summed over a batch, hence small)
NO_ADVERSARY = "no adversary"
SETUPS = {
    "heads on frozen features": ("heads", 0.0, 0.0),
    "hard sharing": ("hard sharing", 0.0, 0.0),
    NO_ADVERSARY: ("shared-private", 0.0, 0.0),        # D trained on S(x), nothing reversed: a probe in training
    "orthogonality only": ("shared-private", 0.0, ORTHOGONALITY),
    "reversal only": ("shared-private", 1.0, 0.0),
    "reversal + orthogonality": ("shared-private", 1.0, ORTHOGONALITY),   # the chapter's earlier "adversarial"
}
MEAN = "mean of the tasks"    # the pseudo-task of ``adversarial_scores``: the per-seed mean accuracy
PROBE = "post-hoc probe"      # the pseudo-task: the linear probe's accuracy on the final shared features

# (b) sinusoids: name -> (method, inner steps, meta step size); the step sizes are the customary ones, untuned
SINUSOID_INITIALISATIONS = {
    "random": (None, 0, None),
    "multi-task": ("fomaml", 0, 1e-3),       # first-order MAML with no inner step = training on the pooled tasks
    "Reptile": ("reptile", 5, 0.5),
    "first-order MAML": ("fomaml", 5, 1e-3),
}
SINUSOID_TEST_STEPS = (1, 5, 20)
SINUSOID_GRID = np.linspace(-5.0, 5.0, 101)

# (b) few-shot text: trunk -> the step sizes tuned on validation (None: nothing to tune)
TRUNKS = {"head on frozen features": None, "random trunk": None,
          "multi-task trunk": (1e-3, 3e-3, 1e-2),      # Adam's lr of the multi-task trunk
          "meta-learned trunk": (0.1, 0.3, 1.0)}       # Reptile's meta step size ε
META_INNER_STEPS = 10         # Reptile's inner steps in meta-training; adaptation is scored after these and after 50
ADAPT_STEPS = (META_INNER_STEPS, 50)
THREE_TASKS = {"name": "3 tasks", "meta_tasks": ["sentiment", "condition", "pos"], "held_out": "supersense"}
SUBTASKS = {"name": "30 sub-tasks", "meta_tasks": ["supersense"], "held_out": "pos", "num_subtasks": 30,
            "subtask_classes": 5}


def shot_key(k: int, steps: int, head_only: bool = False) -> str:
    """The score name of k examples per class after ``steps`` adaptation steps, e.g. ``"k = 4, 10 steps"``."""
    return f"k = {k}, {steps} steps" + (", head only" if head_only else "")


PRIMARY = (
    Comparison("reversal only", NO_ADVERSARY, MEAN),    # does hiding the task (without the penalty) help the tasks?
    Comparison("reversal only", NO_ADVERSARY, PROBE),   # does it hide the task from a fresh probe?
    Comparison("meta-learned trunk", "multi-task trunk", shot_key(4, META_INNER_STEPS)),  # does meta-learning pay?
)


def adversarial_config(label: str, seed: int, *, tasks: Sequence[str] = TASKS, confusion: float = 0.0,
                       fast: bool = False) -> dict:
    """An ablation run (``SETUPS[label]``, or a confusion run with ``confusion`` > 0) as a config."""
    setup = SETUPS.get(label.split(",")[0], ("shared-private", 0.0, 0.0))
    model, reversal, orthogonality = setup
    return {"kind": "adversarial", "label": label, "seed": seed, "model": model, "tasks": list(tasks),
            "reversal": reversal, "orthogonality": orthogonality, "confusion": confusion,
            "adversarial_weight": 1.0, "steps": 30 if fast else 1000, "eval_every": 15 if fast else 50,
            "ramp_steps": 15 if fast else 300, "batch_size": 16, "lr": 1e-3, "shared_width": 64,
            "private_width": 32, "probe_steps": 30 if fast else 300, "max_per_task": 64 if fast else None}


def sinusoid_config(label: str, seed: int, fast: bool = False) -> dict:
    method, inner_steps, meta_lr = SINUSOID_INITIALISATIONS[label]
    return {"kind": "sinusoid", "label": label, "seed": seed, "method": method, "inner_steps": inner_steps,
            "meta_lr": meta_lr, "meta_steps": 20 if fast else 1000, "meta_batch_size": 4, "inner_lr": 0.02,
            "k_shot": 10, "query_size": 50, "eval_tasks": 5 if fast else 100, "test_steps": list(SINUSOID_TEST_STEPS),
            "width": 40}


def few_shot_label(family: Mapping, trunk: str, lr: float | None) -> str:
    """E.g. ``"3 tasks: meta-learned trunk, ε = 0.3"``."""
    step = "" if lr is None else (f", ε = {lr:g}" if trunk == "meta-learned trunk" else f", lr = {lr:g}")
    return f"{family['name']}: {trunk}{step}"


def few_shot_config(family: Mapping, trunk: str, lr: float | None, seed: int, fast: bool = False) -> dict:
    subtasks = "num_subtasks" in family
    return {"kind": "few-shot", "label": few_shot_label(family, trunk, lr), "seed": seed, "trunk": trunk, "lr": lr,
            "family": family["name"], "meta_tasks": list(family["meta_tasks"]), "held_out": family["held_out"],
            "num_subtasks": family.get("num_subtasks"), "subtask_classes": family.get("subtask_classes"),
            "train_steps": 10 if fast else 500, "inner_steps": META_INNER_STEPS, "inner_lr": 0.1, "meta_batch_size": 4,
            "episode": [1, 1] if fast else [8, 8], "schedule": "sampled" if subtasks else "joint",
            "batch_size": 64 if subtasks else 16, "width": 128, "shots": [2, 4] if fast else [4, 8, 16, 32],
            "draws": 2 if fast else 5, "adapt_steps": list(ADAPT_STEPS), "adapt_lr": 0.1, "validation_share": 0.25,
            "max_per_task": 160 if fast else None}


def few_shot_grid(family: Mapping, seeds, fast: bool = False) -> list[dict]:
    return [few_shot_config(family, trunk, lr, seed, fast) for seed in seeds for trunk, lrs in TRUNKS.items()
            for lr in (lrs or (None,))]


def grid(seeds, fast: bool = False) -> list[dict]:
    """Seeds outermost (an interrupted study has whole seeds); fast: a few steps of each run on 64 examples
    per task (160 for few-shot), the same code."""
    configs = []
    for seed in seeds:
        configs += [adversarial_config(label, seed, fast=fast) for label in SETUPS]
        configs += [sinusoid_config(label, seed, fast) for label in SINUSOID_INITIALISATIONS]
        configs += few_shot_grid(THREE_TASKS, [seed], fast)
    return configs


# ---------------------------------------------------------------- data (loaded once per process)

def subtasks_of(x: torch.Tensor, y: torch.Tensor, num_subtasks: int, classes: int, seed: int = 0) -> dict:
    """``num_subtasks`` random ``classes``-way sub-tasks of one task: name -> (x, y relabelled 0..classes−1)."""
    rng = np.random.default_rng(seed)
    num_classes = int(y.max()) + 1
    tasks = {}
    for i in range(num_subtasks):
        chosen = torch.as_tensor(np.sort(rng.choice(num_classes, classes, replace=False)))
        mask = torch.isin(y, chosen)
        tasks[f"sub-task {i}"] = (x[mask], torch.searchsorted(chosen, y[mask]))
    return tasks


# ---------------------------------------------------------------- the runs

def _discriminator_certainty(model: SharedPrivateModel, inputs: Mapping[str, torch.Tensor]) -> dict:
    """The discriminator's mean largest probability and mean probability of the true task on ``inputs``."""
    with torch.no_grad():
        probabilities = torch.cat([model.discriminator(model.trunk(x)).softmax(dim=1) for x in inputs.values()])
        truth = torch.cat([torch.full((len(x),), model.tasks.index(t)) for t, x in inputs.items()])
    return {"confidence": float(probabilities.max(dim=1).values.mean()),
            "true_task_probability": float(probabilities[torch.arange(len(truth)), truth].mean())}


def run_adversarial(config: dict) -> tuple[dict, nn.Module]:
    train_all, test_all, num_classes = feature_data(config["max_per_task"])
    tasks = config["tasks"]
    train_data, test_data = {t: train_all[t] for t in tasks}, {t: test_all[t] for t in tasks}
    seed_everything(config["seed"])
    heads_in = {"heads": 384, "hard sharing": config["shared_width"],
                "shared-private": config["shared_width"] + config["private_width"]}[config["model"]]
    heads = {t: nn.Linear(heads_in, num_classes[t]) for t in tasks}
    objective = None
    if config["model"] == "heads":
        model = HardSharingModel(nn.Identity(), heads)
    elif config["model"] == "hard sharing":
        model = HardSharingModel(mlp(384, config["shared_width"]), heads)
    else:
        model = SharedPrivateModel(mlp(384, config["shared_width"]), {t: mlp(384, config["private_width"]) for t in tasks},
                                   heads, shared_dim=config["shared_width"])
        if config["confusion"] > 0:
            objective = ConfusionObjective(config["adversarial_weight"], config["orthogonality"], config["confusion"],
                                           ramp_steps=config["ramp_steps"])
        else:
            objective = AdversarialObjective(config["adversarial_weight"], config["orthogonality"],
                                             reversal=config["reversal"], ramp_steps=config["ramp_steps"])
    test_inputs = {t: x for t, (x, _) in test_data.items()}
    shared_private = isinstance(model, SharedPrivateModel)

    def eval_fn(m):
        return evaluate(m, test_data, {"accuracy": accuracy}) | (
            {"discriminator": discriminator_accuracy(m, test_inputs)} if shared_private else {})

    history = train(model, schedule_loader(MultiTaskDataset(train_data), "joint", config["batch_size"], config["steps"],
                                           seed=config["seed"]),
                    dict.fromkeys(tasks, nn.functional.cross_entropy), config["steps"], lr=config["lr"],
                    weighting=objective, eval_fn=eval_fn, eval_every=config["eval_every"], progress=False)
    model.eval()
    final = history.final_metrics()
    test_examples = {t: len(test_data[t][1]) for t in tasks}
    scores = {t: final[f"{t}/accuracy"] for t in tasks}
    train_inputs = {t: x for t, (x, _) in train_data.items()}
    probe = {"linear": post_hoc_probe(model.trunk, train_inputs, test_inputs, steps=config["probe_steps"], seed=config["seed"]),
             "mlp": post_hoc_probe(model.trunk, train_inputs, test_inputs, hidden=64, steps=config["probe_steps"],
                                   seed=config["seed"])}
    metrics = {
        "scores": scores,
        "correct": {t: round(scores[t] * n) for t, n in test_examples.items()},
        "test_examples": test_examples,
        "majority": {t: majority_class_accuracy(train_data[t][1], test_data[t][1]) for t in tasks},
        "chance": max(test_examples.values()) / sum(test_examples.values()),
        "probe": probe,
    }
    if shared_private:
        metrics["discriminator"] = {"steps": list(history.eval_steps), "accuracy": [round(v, 5) for v in history.metrics["discriminator"]],
                                    "final": history.metrics["discriminator"][-1], **_discriminator_certainty(model, test_inputs)}
    return metrics, model


def _first_and_last_tenth(losses: Sequence[float]) -> dict[str, float] | None:
    """Meta-training's query loss, mean of its first and of its last tenth of steps (None: no meta-training)."""
    if not losses:
        return None
    tenth = max(1, len(losses) // 10)
    return {"first 10 %": float(np.mean(losses[:tenth])), "last 10 %": float(np.mean(losses[-tenth:]))}


def _sinusoid_model(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(1, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1))


def sinusoid_evaluation_tasks(config: dict) -> list:
    """The held-out tasks (episodes) of a sinusoid run, drawn with seeds no meta-training uses."""
    family = SinusoidTasks(k_shot=config["k_shot"], query_size=config["query_size"])
    return [family(np.random.default_rng(10_000 + i)) for i in range(config["eval_tasks"])]


def run_sinusoid(config: dict) -> tuple[dict, nn.Module]:
    seed_everything(config["seed"])
    model = _sinusoid_model(config["width"])
    losses = []
    if config["method"] is not None:
        losses = meta_train(model, SinusoidTasks(k_shot=config["k_shot"], query_size=config["query_size"]),
                            config["meta_steps"], method=config["method"], meta_batch_size=config["meta_batch_size"],
                            inner_steps=config["inner_steps"], inner_lr=config["inner_lr"], meta_lr=config["meta_lr"],
                            seed=config["seed"], progress=False)
    episodes = sinusoid_evaluation_tasks(config)
    scores = {}
    for steps in config["test_steps"]:
        errors = []
        for episode in episodes:
            fitted = adapt(model, episode.support, episode.loss_fn, steps, config["inner_lr"])
            with torch.no_grad():
                errors.append(float(episode.loss_fn(fitted(episode.query[0]), episode.query[1])))
        scores[f"query MSE, {steps} step{'s' if steps > 1 else ''}"] = float(np.mean(errors))
    grid_x = torch.tensor(SINUSOID_GRID, dtype=torch.float32)[:, None]
    fitted = adapt(model, episodes[0].support, episodes[0].loss_fn, 5, config["inner_lr"])
    with torch.no_grad():
        before, after = model(grid_x)[:, 0], fitted(grid_x)[:, 0]
    metrics = {"scores": scores,
               "curves": {"before": [round(float(v), 4) for v in before], "after 5 steps": [round(float(v), 4) for v in after]},
               "meta_query_loss": _first_and_last_tenth(losses)}
    return metrics, model


def _few_shot_tasks(config: dict):
    """(meta-training tasks, held-out pool, validation, test) of a few-shot config; pairs of (x, y)."""
    train_all, test_all, _ = feature_data(config["max_per_task"])
    if config["num_subtasks"]:
        x, y = train_all[config["meta_tasks"][0]]
        meta = subtasks_of(x, y, config["num_subtasks"], config["subtask_classes"])
    else:
        meta = {t: train_all[t] for t in config["meta_tasks"]}
    x, y = train_all[config["held_out"]]
    pool, validation = validation_split(y, config["validation_share"])
    return meta, (x[pool], y[pool]), (x[validation], y[validation]), test_all[config["held_out"]]


def run_few_shot(config: dict) -> tuple[dict, nn.Module]:
    meta, pool, validation, test = _few_shot_tasks(config)
    seed, width, steps = config["seed"], config["width"], config["train_steps"]
    seed_everything(seed)
    losses = []
    if config["trunk"] == "head on frozen features":
        trunk = nn.Identity()
    elif config["trunk"] == "random trunk":
        trunk = mlp(384, width)
    elif config["trunk"] == "multi-task trunk":
        model = HardSharingModel(mlp(384, width), {t: nn.Linear(width, int(y.max()) + 1) for t, (_, y) in meta.items()})
        train(model, schedule_loader(MultiTaskDataset(meta), config["schedule"], config["batch_size"], steps, seed=seed),
              dict.fromkeys(meta, nn.functional.cross_entropy), steps, lr=config["lr"], progress=False)
        trunk = model.trunk
    else:
        trunk = mlp(384, width)
        episodes = ClassificationEpisodes(meta, width, k_per_class=config["episode"][0], query_per_class=config["episode"][1])
        losses = meta_train(trunk, episodes, steps, method="reptile", meta_batch_size=config["meta_batch_size"],
                            inner_steps=config["inner_steps"], inner_lr=config["inner_lr"], meta_lr=config["lr"],
                            seed=seed, progress=False)
    trunk.eval()
    with torch.no_grad():   # the frozen trunk's features, for head-only adaptation
        frozen = [(trunk(x), y) for x, y in (pool, validation, test)]
    scores, validation_scores, correct = {}, {}, {}
    for k in config["shots"]:
        for n in config["adapt_steps"]:
            for head_only in (False, True):
                model, (pool_split, validation_split_, test_split) = (
                    (nn.Identity(), frozen) if head_only else (trunk, (pool, validation, test)))
                key, on_test, on_validation = shot_key(k, n, head_only), [], []
                for draw in range(config["draws"]):   # every trunk sees the same support sets
                    for split, into in ((test_split, on_test), (validation_split_, on_validation)):
                        score, _ = few_shot_accuracy(model, pool_split, split, k, n, config["adapt_lr"],
                                                     np.random.default_rng([seed, k, draw]))
                        into.append(score)
                scores[key], validation_scores[key] = float(np.mean(on_test)), float(np.mean(on_validation))
                correct[key] = sum(round(s * len(test[1])) for s in on_test)
    metrics = {"scores": scores, "validation": validation_scores, "correct": correct,
               "test_examples": len(test[1]), "validation_examples": len(validation[1]),
               "chance": 1 / (int(test[1].max()) + 1), "meta_query_loss": _first_and_last_tenth(losses)}
    return metrics, trunk


RUNS = {"adversarial": run_adversarial, "sinusoid": run_sinusoid, "few-shot": run_few_shot}


run = one_thread_run(RUNS)


def estimate_seconds(config: dict) -> float:
    """A run's time on one thread of a busy 2-core CPU (measured on seed 0 of the full-size grid)."""
    if config["kind"] == "adversarial":
        return 9.0 * config["steps"] / 1000 + 1
    if config["kind"] == "sinusoid":
        return (1.0 if config["method"] is None else 12.0 * config["meta_steps"] / 1000) + 1
    per_step = {"meta-learned trunk": 0.035, "multi-task trunk": 0.002}.get(config["trunk"], 0.0)
    return per_step * config["train_steps"] * (1.5 if config["num_subtasks"] else 1) + 3


# ---------------------------------------------------------------- reading the results

def adversarial_scores(results: StudyResults, labels: Sequence[str]) -> dict[str, dict[str, list[float]]]:
    """{label: {task: accuracies, MEAN: per-seed mean over the tasks, PROBE: linear probe accuracy}} for
    ``evidence.family_intervals`` (name every comparison's task: MEAN, PROBE or a task)."""
    out = {}
    for label in labels:
        rows = results.select(label)
        tasks = rows[0]["config"]["tasks"]
        per_task = {t: [row["metrics"]["scores"][t] for row in rows] for t in tasks}
        out[label] = per_task | {MEAN: list(np.mean([per_task[t] for t in tasks], axis=0)),
                                 PROBE: [row["metrics"]["probe"]["linear"] for row in rows]}
    return out


def tuned_label(results: StudyResults, labels: Sequence[str], key: str) -> str:
    """The label among ``labels`` with the highest validation accuracy on score ``key``, averaged over
    seeds (the test split is not read)."""
    if not labels:
        raise ValueError("no labels to choose from; pass the labels of one trunk's step sizes")
    means = {label: float(np.mean([row["metrics"]["validation"][key] for row in results.select(label)])) for label in labels}
    return max(means, key=means.get)


def few_shot_scores(results: StudyResults, family: Mapping = THREE_TASKS,
                    key: str | None = None) -> tuple[dict[str, dict[str, list[float]]], dict[str, str]]:
    """({trunk: {score key: test accuracies per seed}}, {trunk: the label chosen}) of ``family``'s runs: a
    tuned trunk's step size is the one with the best validation accuracy at ``key`` (default: the first k
    of the runs after the inner steps Reptile trained with, trunk and head adapted)."""
    chosen = {}
    for trunk, lrs in TRUNKS.items():
        labels = [few_shot_label(family, trunk, lr) for lr in (lrs or (None,))]
        if key is None:
            first = results.select(labels[0])[0]["config"]
            key = shot_key(first["shots"][0], first["inner_steps"])
        chosen[trunk] = labels[0] if len(labels) == 1 else tuned_label(results, labels, key)
    scores = {trunk: {k: [row["metrics"]["scores"][k] for row in results.select(label)]
                      for k in results.select(label)[0]["metrics"]["scores"]} for trunk, label in chosen.items()}
    return scores, chosen


STUDY = Study(
    chapter="11",
    slug="adversarial_and_meta_learning",
    question="does hiding the task help, and does it hide it (probe)? where does meta-learning pay?",
    grid=grid,
    run=run,
    estimate_seconds=estimate_seconds,
    primary=PRIMARY,
    default_seeds=DEFAULT_SEEDS,
)

# The worked solutions' runs (the course's minimum of 5 seeds: their comparisons are exploratory): exercise 1 (the confusion loss, against the study's reversal only and no
# adversary), exercise 2 (one task per source), exercise 4 (30 five-class sub-tasks of supersense,
# adapted to pos); exercise 5 reads the study's sinusoid runs (1, 5 and 20 adaptation steps).
PAIR = ("sentiment", "supersense")


def exercise_grid(seeds, fast: bool = False) -> list[dict]:
    configs = []
    for seed in seeds:
        configs.append(adversarial_config("confusion", seed, confusion=1.0, fast=fast))
        configs += [adversarial_config(f"{label}, one task per source", seed, tasks=PAIR, fast=fast)
                    for label in (NO_ADVERSARY, "reversal only")]
        configs += few_shot_grid(SUBTASKS, [seed], fast)
    return configs


EXERCISES = Study(
    chapter="11",
    slug="adversarial_and_meta_learning_exercises",
    question="the worked solutions' runs: the confusion loss, one task per source, 30 sub-tasks adapted to pos",
    grid=exercise_grid,
    run=run,
    estimate_seconds=estimate_seconds,
    primary=(),
    default_seeds=DEFAULT_SEEDS[:5],
)
