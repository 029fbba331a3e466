"""Chapter 04's study: early stopping reads validation only, the subsets, the runs' bookkeeping and the
chapter's comparison family."""

import math

import numpy as np
import pytest
import torch

from mtl_tutorial.evidence import family_intervals
from mtl_tutorial.studies import get_study
from mtl_tutorial.studies import training_schedules as study
from mtl_tutorial.studies.runner import StudyResults, config_hash


def test_early_stopped_reads_the_test_value_at_the_lowest_validation_loss():
    validation = [0.9, 0.5, 0.7, 0.5]
    test = [0.1, 0.6, 0.99, 0.7]          # the best test value (0.99) is not where validation is lowest
    assert study.early_stopped(validation, test) == (1, 0.6)   # the first of the tied minima


def test_early_stopped_rejects_mismatched_or_missing_values():
    with pytest.raises(ValueError, match="equally long"):
        study.early_stopped([0.1, 0.2], [0.5])
    with pytest.raises(ValueError, match="nan"):
        study.early_stopped([0.1, math.nan], [0.5, 0.6])


def test_subsample_is_stratified_and_sized():
    labels = torch.tensor([0] * 80 + [1] * 20)
    kept = study.subsample(labels, 10)
    assert len(kept) == 10 and torch.equal(kept, kept.sort().values)
    assert (labels[kept] == 0).sum() == 8 and (labels[kept] == 1).sum() == 2
    with pytest.raises(ValueError, match="size"):
        study.subsample(labels, 100)


def test_text_data_carves_validation_out_of_training():
    data = study.text_data(("sentiment",), 80, 0.2)["sentiment"]
    train_x, validation_x = data["train"][0], data["validation"][0]
    assert len(train_x) + len(validation_x) == 80
    assert 12 <= len(validation_x) <= 20
    # no training example is also a validation example (rows are distinct feature vectors)
    assert not any(torch.equal(v, t) for v in validation_x for t in train_x)


def test_temperature_data_cuts_the_small_task_to_a_tenth():
    data = study.temperature_data("supersense", "condition", 10, 200, 0.2)
    large, small = len(data["supersense"]["train"][1]), len(data["condition"]["train"][1])
    assert abs(small - large // 10) <= 2      # per-class rounding of the stratified subset


def test_synthetic_runs_are_evaluated_after_the_same_examples():
    joint = study.run(study.synthetic_config(0.5, "joint", 0, fast=True))[0]
    sequential = study.run(study.synthetic_config(0.5, "sequential", 0, fast=True))[0]
    assert joint["examples"] == sequential["examples"]
    # phase end: task 1's R² at the end of its own phase (step K of 2K), before task 2's phase
    middle = sequential["examples"].index(100 * 32)
    assert sequential["phase_end"]["task 1"] == sequential["curves"]["task 1"][middle]
    assert sequential["scores"]["task 1"] == sequential["curves"]["task 1"][-1]


def _fake_metrics(config, seed):
    """Metrics of the runs' shape, with values that depend on the run and the seed."""
    rng = np.random.default_rng([seed, int(config_hash(config)[:6], 16)])
    if config["kind"] == "synthetic":
        metrics = {"scores": {t: float(rng.uniform(0, 100)) for t in ("task 1", "task 2")}}
        if config["schedule"] == "sequential":
            metrics["phase_end"] = {"task 1": float(rng.uniform(0, 100))}
        return metrics
    tasks = config["tasks"] if config["kind"] == "schedules" else (
        [config["task"]] if config["tau"] is None else [config["large"], config["small"]])
    metrics = {key: {t: float(rng.uniform(0.5, 1)) for t in tasks} for key in ("scores", "final", "majority")}
    if config["label"].startswith("sequential"):
        first = config["label"].removeprefix("sequential ").split("→")[0]
        metrics["phase_end"] = {first: float(rng.uniform(0.5, 1))}
    return metrics


def test_chapter_scores_hold_every_compared_name_and_read_the_right_values():
    configs = get_study("04").configs((0, 1, 2), fast=True)
    rows = [{"config": c, "metrics": _fake_metrics(c, c["seed"])} for c in configs]
    scores = study.chapter_scores(StudyResults(study.STUDY, rows, None))
    results = family_intervals(scores, study.EXPLORATORY, study.PRIMARY, scale=1)
    assert len(results) == len(study.PRIMARY) + len(study.EXPLORATORY)
    sequential = sorted((r for r in rows if r["config"]["label"] == "p = 0.9: sequential"), key=lambda r: r["config"]["seed"])
    change = [r["metrics"]["scores"]["task 1"] - r["metrics"]["phase_end"]["task 1"] for r in sequential]
    assert scores["p = 0.9: task 1's R² change in task 2's phase"][study.PAIRED] == pytest.approx(change)
    tau2 = sorted((r for r in rows if r["config"]["label"] == "τ = 2"), key=lambda r: r["config"]["seed"])
    assert scores["τ = 2, condition"][study.PAIRED] == pytest.approx([100 * r["metrics"]["scores"]["condition"] for r in tau2])
    assert scores["τ = 2, condition at the end"][study.PAIRED] == pytest.approx([100 * r["metrics"]["final"]["condition"] for r in tau2])


def test_temperature_sizes_are_those_the_runs_train_on():
    data = study.temperature_data("supersense", "condition", 10, 200, 0.2)
    assert study.temperature_sizes(max_per_task=200) == {t: len(data[t]["train"][1]) for t in ("supersense", "condition")}
