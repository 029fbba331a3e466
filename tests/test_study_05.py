"""Chapter 05's study: the grid gives every arm the same tuning budget, tuning reads validation only,
early stopping picks the best validation epoch, and the SGD control steps the model by plain SGD; the worked
solutions' runs change a chapter arm in the settings they name and pair with its seeds."""

import math

import pytest
import torch
from torch import nn

from mtl_tutorial.studies import STUDY_MODULES, get_study, load_study
from mtl_tutorial.studies import dynamic_task_weighting as study05
from mtl_tutorial.studies.runner import StudyResults, config_hash


def test_registered_with_primary_comparisons_and_powered_seeds():
    assert STUDY_MODULES["05"] == "dynamic_task_weighting"
    study = get_study("05")
    assert 1 <= len(study.primary) <= 3
    assert all(c.b == "equal" and c.task is None for c in study.primary)
    assert len(study.default_seeds) >= 5


def test_every_arm_gets_the_same_tuning_budget():
    configs = get_study("05").configs(seeds=[0])
    per_arm = {}
    for config in configs:
        per_arm.setdefault(config["arm"], set()).add(config["lr"])
        assert config["steps"] >= 2 * 30   # more than one epoch of every task (30 steps an epoch)
    assert set(per_arm) == set(study05.ARMS)
    assert {len(lrs) for lrs in per_arm.values()} == {len(study05.LEARNING_RATES["Adam"])}


def test_best_epoch_is_the_earliest_best_validation():
    assert study05.best_epoch([0.1, 0.5, 0.3, 0.5]) == 1
    with pytest.raises(ValueError, match="empty"):
        study05.best_epoch([])


def _row(arm, lr, seed, validation, test):
    config = study05.config(arm, lr, seed)
    return {"config": config, "metrics": {"validation": validation, "scores": dict.fromkeys(study05.TASKS, test)}}


def test_tuned_scores_choose_by_validation_never_by_test():
    rows = []
    for seed in (0, 1):
        for lr in study05.LEARNING_RATES["Adam"]:
            # lr 0.01 is best on validation, 0.001 on test: the choice must follow validation
            rows.append(_row("equal", lr, seed, validation=0.9 if lr == 1e-2 else 0.5, test=0.9 if lr == 1e-3 else 0.4))
    results = StudyResults(study05.STUDY, rows, None)
    scores, chosen = study05.tuned_scores(results, arms=["equal"])
    assert chosen == {"equal": study05.run_label("equal", 1e-2)}
    assert scores["equal"]["pos"] == [0.4, 0.4]


def test_sgd_control_steps_the_model_by_plain_sgd_and_the_weights_by_adam():
    model, weights = nn.Linear(3, 1), nn.Parameter(torch.zeros(2))
    before_model = [p.detach().clone() for p in model.parameters()]
    optimizer = study05.SGDWithAdamWeights(model.parameters(), lr=0.5, weighting_parameters=[weights], weighting_lr=0.1)
    optimizer.zero_grad()
    loss = model(torch.ones(1, 3)).sum() + (weights * torch.tensor([3.0, -0.01])).sum()
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    optimizer.step()
    for p, p0, g in zip(model.parameters(), before_model, grads):
        torch.testing.assert_close(p.detach(), p0 - 0.5 * g)
    # Adam's first step is lr · sign(g), whatever the gradient's size
    torch.testing.assert_close(weights.detach(), torch.tensor([-0.1, 0.1]), atol=1e-6, rtol=1e-5)
    assert len(optimizer.param_groups) == 2


def test_unknown_weighting_names_the_choices():
    with pytest.raises(ValueError, match="weightings are: equal, uncertainty, GradNorm, DWA"):
        study05.make_weighting({"weighting": "uncertain"}, steps_per_epoch=10)


def test_a_fast_run_stops_at_its_best_validation_epoch():
    config = study05.config("uncertainty", 1e-2, seed=0, fast=True)
    metrics, model = study05.run(config, keep_model=True)
    best = study05.best_epoch(metrics["validation_curve"])
    assert metrics["stopped_at"] == metrics["eval_steps"][best]
    assert metrics["validation"] == pytest.approx(metrics["validation_curve"][best], abs=1e-5)
    assert set(metrics["correct"]) == set(study05.TASKS)
    assert all(0 <= metrics["correct"][t] <= metrics["test_examples"][t] for t in study05.TASKS)
    # the head steps are measured per epoch and are non-zero for a model that trained
    assert all(len(v) == len(metrics["eval_steps"]) and max(v) > 0 for v in metrics["head_steps"].values())
    assert isinstance(model, nn.Module)


def test_majority_baseline_predicts_the_training_majority_not_the_test_one():
    # training majority is class 1; the test split's is class 0: F1 of class 1 = 2/5, class 0 = 0
    value = study05.majority_macro_f1(torch.tensor([1, 1, 0]), torch.tensor([0, 0, 0, 1]), num_classes=2)
    assert value == pytest.approx(0.2)


def test_head_vector_is_a_copy_of_weight_and_bias():
    model = study05.HardSharingModel(nn.Identity(), {"pos": nn.Linear(3, 2)})
    vector = study05.head_vector(model, "pos")
    assert vector.shape == (3 * 2 + 2,)
    with torch.no_grad():
        model.heads["pos"].weight.add_(1.0)
    assert not torch.equal(vector, study05.head_vector(model, "pos"))


def test_estimates_rank_the_runs_by_their_cost():
    heads, trunk, gradnorm = (study05.config(arm, 1e-3, 0) for arm in (study05.HEADS, "equal", "GradNorm"))
    assert study05.estimate_seconds(heads) < study05.estimate_seconds(trunk) < study05.estimate_seconds(gradnorm)
    assert study05.estimate_seconds(study05.config("equal", 1e-3, 0, fast=True)) < study05.estimate_seconds(trunk)


def test_the_exercise_runs_change_a_chapter_arm_in_the_declared_settings_only():
    study, exercises = get_study("05"), get_study("05", exercises=True)
    assert exercises is study05.EXERCISES and exercises.default_seeds == study.default_seeds   # paired with the chapter's
    chapter = {config_hash(c) for c in study.configs(seeds=[0])}
    configs = exercises.configs(seeds=[0])
    for config in configs:
        if config["arm"] in study05.RERUN_ARMS:   # exercise 3's reference: the chapter's run itself
            assert config_hash(config) in chapter
            continue
        spec = study05.EXERCISE_ARMS[config["arm"]]
        base = study05.config(spec.base, config["lr"], 0)
        changed = {k for k in set(config) | set(base) if config.get(k) != base.get(k)}
        assert changed == {"label", "arm", *spec.changes}, config["label"]
        assert config_hash(config) not in chapter
    per_arm = {}
    for config in configs:
        per_arm.setdefault(config["arm"], []).append(config["lr"])
    for arm, lrs in per_arm.items():   # one knob at the parent's tuned step size, or a new arm tuned like the chapter's
        assert tuple(lrs) in {(study05.TUNED_LR.get(arm) or study05.TUNED_LR.get(study05.EXERCISE_ARMS[arm].base),),
                              study05.LEARNING_RATES["Adam"]}, arm
    assert len(exercises.configs()) == len(configs) * len(study.default_seeds)


def test_the_exercise_primaries_name_runs_of_the_two_studies_or_their_gaps():
    primary = study05.EXERCISES.primary
    assert sorted(study05.EXERCISE_PRIMARY) == [1, 2, 3, 4, 5, 6]
    assert all(1 <= len(group) <= 2 for group in study05.EXERCISE_PRIMARY.values())
    scores = {arm: dict.fromkeys(study05.TASKS, [0.5, 0.6]) for arm in (*study05.ARMS, *study05.EXERCISE_ARMS)}
    arms = study05.with_gaps(scores)
    assert all({c.a, c.b} <= set(arms) and c.task in (None, *study05.TASKS) for c in primary)
    assert arms["GradNorm − equal, two layers"]["pos"] == [0.0, 0.0]


def test_with_gaps_subtracts_equal_weighting_of_the_same_trunk_seed_by_seed():
    scores = {arm: dict.fromkeys(study05.TASKS, [0.5, 0.5]) for arm in (*study05.ARMS, *study05.EXERCISE_ARMS)}
    scores["uncertainty, two layers"] = dict.fromkeys(study05.TASKS, [0.7, 0.4])
    scores["equal, two layers"] = dict.fromkeys(study05.TASKS, [0.6, 0.6])
    gaps = study05.with_gaps(scores)
    assert gaps["uncertainty − equal, two layers"]["sentiment"] == pytest.approx([0.1, -0.2])
    assert gaps["uncertainty − equal, one layer"]["sentiment"] == pytest.approx([0.0, 0.0])


def test_tuned_lr_is_what_the_committed_study_chose_on_validation():
    _, chosen = study05.tuned_scores(load_study(study05.STUDY), arms=list(study05.TUNED_LR))
    assert chosen == {arm: study05.run_label(arm, lr) for arm, lr in study05.TUNED_LR.items()}


def test_gradnorm_measures_the_first_layer_when_asked_and_the_static_weights_are_one_over_ln_c():
    model = study05.HardSharingModel(study05.mlp(384, 8, 8), {t: nn.Linear(8, 2) for t in study05.TASKS})
    first = study05.exercise_config("GradNorm, two layers, W = first layer", 1e-2, 0)
    assert study05.make_weighting(first, 10, model).shared_parameters == [model.trunk[0].weight]
    assert study05.make_weighting(study05.config("GradNorm", 1e-2, 0), 10, model).shared_parameters is None   # the last
    static = study05.make_weighting(study05.exercise_config("1/ln C", 1e-2, 0), 10, num_classes=dict.fromkeys(study05.TASKS, 4))
    assert static.weights == pytest.approx(dict.fromkeys(study05.TASKS, 1 / math.log(4)))


def test_a_fast_exercise_run_records_losses_final_weights_and_variances():
    config = study05.exercise_config("uncertainty, weighting_lr = lr", 3e-3, seed=0, fast=True)
    assert config["weighting_lr"] == config["lr"] == 3e-3
    metrics, _ = study05.run(config)
    epochs = len(metrics["eval_steps"])
    assert all(len(metrics["train_losses"][t]) == epochs and min(metrics["train_losses"][t]) > 0 for t in study05.TASKS)
    # λ_t = e^(-s_t)/2 at the last step; σ_t² = e^(s_t) after it: one Adam step of 3e-3 apart at most
    for t in study05.TASKS:
        assert 1 / (2 * metrics["final_weights"][t]) == pytest.approx(metrics["variances"][t], rel=1e-2)
    two_layers, _ = study05.run(study05.exercise_config("GradNorm, two layers", 1e-2, seed=0, fast=True))
    assert "variances" not in two_layers and sum(two_layers["final_weights"].values()) == pytest.approx(4, abs=1e-3)
