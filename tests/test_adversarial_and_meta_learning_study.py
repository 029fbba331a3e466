"""Chapter 11's study: an ablation that changes one switch at a time, supports and tuning that never read
the test split, and the read-back helpers the chapter's intervals rest on."""

import numpy as np
import pytest
import torch

from mtl_tutorial.studies import get_study
from mtl_tutorial.studies import adversarial_and_meta_learning as study11
from mtl_tutorial.studies.feature_tasks import validation_split
from mtl_tutorial.studies.runner import StudyResults


def test_each_ablation_setup_differs_from_no_adversary_in_one_switch_only():
    configs = {c["label"]: c for c in get_study("11").configs([0]) if c["kind"] == "adversarial"}
    base = configs[study11.NO_ADVERSARY]
    changed = {label: {k for k in c if c[k] != base[k]} - {"label"} for label, c in configs.items()}
    assert changed["reversal only"] == {"reversal"} and configs["reversal only"]["reversal"] == 1.0
    assert changed["orthogonality only"] == {"orthogonality"} and configs["orthogonality only"]["orthogonality"] > 0
    assert changed["reversal + orthogonality"] == {"reversal", "orthogonality"}
    assert base["reversal"] == base["orthogonality"] == 0.0


def test_the_primary_comparisons_name_runs_and_scores_of_the_study():
    study = get_study("11")
    labels = {c["label"] for c in study.configs()}
    trunks = set(study11.TRUNKS)
    assert len(study.default_seeds) >= 5 and 1 <= len(study.primary) <= 3
    for comparison in study.primary:
        assert {comparison.a, comparison.b} <= labels | trunks
    few_shot = next(c for c in study.configs() if c["kind"] == "few-shot")
    keys = {study11.shot_key(k, n, h) for k in few_shot["shots"] for n in few_shot["adapt_steps"] for h in (False, True)}
    assert study.primary[2].task in keys and study11.META_INNER_STEPS in few_shot["adapt_steps"]


def test_the_validation_split_takes_a_share_of_every_class_and_leaves_the_rest_for_supports():
    labels = torch.tensor([0] * 20 + [1] * 8 + [2] * 2)
    pool, validation = validation_split(labels, 0.25)
    assert sorted(torch.cat([pool, validation]).tolist()) == list(range(30))   # disjoint, and together all of them
    assert [int((labels[validation] == c).sum()) for c in range(3)] == [5, 2, 1]
    assert [int((labels[pool] == c).sum()) for c in range(3)] == [15, 6, 1]
    assert torch.equal(validation_split(labels, 0.25)[1], validation)   # the same split every time
    with pytest.raises(ValueError, match="class 3 has 1 example"):
        validation_split(torch.tensor([0, 0, 3]), 0.5)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        validation_split(labels, 1.0)


def test_sub_tasks_keep_their_classes_relabelled_from_zero():
    x, y = torch.arange(40.0)[:, None], torch.arange(40) % 8
    tasks = study11.subtasks_of(x, y, num_subtasks=5, classes=3)
    assert len(tasks) == 5
    for sub_x, sub_y in tasks.values():
        assert sorted(set(sub_y.tolist())) == [0, 1, 2] and len(sub_x) == 15
        original = y[sub_x[:, 0].long()]
        assert torch.equal(sub_y, torch.searchsorted(torch.unique(original), original))  # class order kept


def _rows(label, validation, test, kind_config=None):
    config = kind_config or {"shots": [4], "inner_steps": 10}
    return [{"config": {"label": label, "seed": s, **config},
             "metrics": {"validation": {"k = 4, 10 steps": v}, "scores": {"k = 4, 10 steps": t}}}
            for s, (v, t) in enumerate(zip(validation, test))]


def test_step_sizes_are_chosen_on_validation_never_on_test():
    family = study11.THREE_TASKS
    rows = []
    for trunk, lrs in study11.TRUNKS.items():
        for lr in lrs or (None,):
            good_on_validation = lr in (1e-3, 0.1)
            rows += _rows(study11.few_shot_label(family, trunk, lr), [0.6 if good_on_validation else 0.5] * 2,
                          [0.4 if good_on_validation else 0.9] * 2)   # test would pick another one
    results = StudyResults(get_study("11"), rows, None)
    scores, chosen = study11.few_shot_scores(results, family)
    assert chosen["multi-task trunk"] == "3 tasks: multi-task trunk, lr = 0.001"
    assert chosen["meta-learned trunk"] == "3 tasks: meta-learned trunk, ε = 0.1"
    assert chosen["random trunk"] == "3 tasks: random trunk"
    assert scores["multi-task trunk"] == {"k = 4, 10 steps": [0.4, 0.4]}
    with pytest.raises(ValueError, match="no labels to choose from"):
        study11.tuned_label(results, [], "k = 4, 10 steps")


def test_adversarial_scores_add_the_per_seed_mean_and_the_probe():
    rows = [{"config": {"label": "x", "seed": s, "tasks": ["a", "b"]},
             "metrics": {"scores": {"a": a, "b": b}, "probe": {"linear": p, "mlp": 0.0}}}
            for s, (a, b, p) in enumerate([(0.5, 0.7, 0.3), (0.6, 1.0, 0.4)])]
    scores = study11.adversarial_scores(StudyResults(get_study("11"), rows, None), ["x"])
    assert scores["x"][study11.MEAN] == pytest.approx([0.6, 0.8])
    assert scores["x"][study11.PROBE] == [0.3, 0.4] and scores["x"]["a"] == [0.5, 0.6]


def test_a_sinusoid_run_is_scored_on_held_out_tasks_and_records_its_function_before_adaptation():
    config = study11.sinusoid_config("Reptile", 0, fast=True)
    metrics, model = study11.run(config, keep_model=True)
    assert set(metrics["scores"]) == {"query MSE, 1 step", "query MSE, 5 steps", "query MSE, 20 steps"}
    with torch.no_grad():
        expected = model(torch.tensor(study11.SINUSOID_GRID, dtype=torch.float32)[:, None])[:, 0]
    np.testing.assert_allclose(metrics["curves"]["before"], expected.numpy(), atol=1e-4)
    held_out = study11.sinusoid_evaluation_tasks(config)[0]
    assert not torch.equal(held_out.support[0], study11.SinusoidTasks(10, 50)(np.random.default_rng(0)).support[0])
