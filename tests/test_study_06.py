"""Chapter 06's study: the static controls take the weights of the same seed's aggregator run, the null
pairs each task pair with the halves of its own two tasks, and stored curves are window means."""

import numpy as np
import pytest
import torch

from mtl_tutorial.studies import get_study
from mtl_tutorial.studies import gradient_alignment as study06
from mtl_tutorial.studies.runner import StudyResults


def test_the_primary_comparisons_name_runs_of_the_grid_and_the_null():
    study = get_study("06")
    labels = {c["label"] for c in study.configs()}
    assert len(study.default_seeds) >= 5 and 1 <= len(study.primary) <= 3
    for comparison in study.primary:
        assert {comparison.a, comparison.b} <= labels | {study06.CROSS, study06.NULL}
    assert study.primary[1] == (study06.label("cagrad"), study06.static_label("cagrad"), None)
    kinds = [c["kind"] for c in study.configs([0])]
    assert kinds.index("static") > max(i for i, k in enumerate(kinds) if k == "aggregate")  # its source runs first


def test_a_static_control_trains_with_the_mean_weights_of_its_seeds_aggregator_run():
    configs = {c["label"]: c for c in get_study("06").configs([1], fast=True)}
    source = configs[study06.label("cagrad")]
    metrics, _ = study06.run(source)
    study06._MEAN_WEIGHTS.clear()   # a fresh process (a resumed study): the static run must re-train its source
    static, _ = study06.run(configs[study06.static_label("cagrad")])
    assert static["weights"] == pytest.approx(metrics["alpha_mean"], abs=1e-9)
    assert len(set(np.round(list(static["weights"].values()), 6))) > 1   # CAGrad's α are not all equal
    with pytest.raises(ValueError, match="needs an aggregator run's config"):
        study06.mean_weights(configs[study06.HEADS])


def test_windowed_takes_the_mean_of_each_window():
    assert study06.windowed(np.arange(6.0), count=3) == [0.5, 2.5, 4.5]
    assert study06.windowed([1.0, 3.0], count=30) == [1.0, 3.0]     # fewer values than windows: one each
    with pytest.raises(ValueError, match="non-empty 1-d"):
        study06.windowed([])


def _null_row(seed, halves, pairs):
    return {"config": {"label": "null: halves of each task", "seed": seed, "kind": "null", "steps": 300},
            "metrics": {"halves": {t: {"conflict": v, "mean": v / 10} for t, v in halves.items()},
                        "pairs": {p: {"conflict": v, "mean": v / 10} for p, v in pairs.items()}}}


def test_conflict_scores_set_each_pair_against_the_halves_of_its_own_two_tasks():
    tasks, pairs = study06.TASKS, [study06.pair_key(a, b) for a, b in study06.PAIRS]
    halves = [dict(zip(tasks, [0.30, 0.34, 0.38, 0.42])), dict(zip(tasks, [0.32, 0.32, 0.32, 0.32]))]
    crossed = [dict(zip(pairs, np.linspace(0.40, 0.50, 6))), dict(zip(pairs, np.full(6, 0.45)))]
    rows = [_null_row(1, halves[1], crossed[1]), _null_row(0, halves[0], crossed[0])]   # out of seed order
    results = StudyResults(get_study("06"), rows, None)
    scores = study06.conflict_scores(results)
    assert scores[study06.CROSS][study06.ALL_PAIRS] == pytest.approx([0.45, 0.45])
    assert scores[study06.NULL][study06.ALL_PAIRS] == pytest.approx([0.36, 0.32])
    assert scores[study06.NULL]["sentiment · pos"] == pytest.approx([(0.30 + 0.42) / 2, 0.32])
    assert scores[study06.CROSS]["sentiment · condition"] == pytest.approx([0.40, 0.45])
    assert study06.conflict_scores(results, "mean")[study06.NULL][study06.ALL_PAIRS] == pytest.approx([0.036, 0.032])
    with pytest.raises(ValueError, match="statistic must be 'conflict'"):
        study06.conflict_scores(results, "cosine")


def test_every_batch_holds_every_task_although_the_tasks_differ_in_size():
    data = {"small": (torch.randn(20, 3), torch.zeros(20, dtype=torch.long)),
            "large": (torch.randn(400, 3), torch.zeros(400, dtype=torch.long))}
    config = {"batch_size": 32, "sampling": "uniform", "seed": 0, "steps": 60}
    batches = list(study06._loader(data, config))
    assert len(batches) == 60   # the run's steps, although "small" has 20 examples (more than one pass)
    assert all(set(batch.tasks) == {"small", "large"} for batch in batches)
    counts = np.array([sum(task == "small" for task in batch.tasks) for batch in batches])
    assert 12 < counts.mean() < 20   # about half of each batch, not in proportion to the sizes
