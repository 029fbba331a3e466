"""Chapter 02's study: its grid, splits and readers (the runs themselves are exercised on tiny configs)."""

import numpy as np
import pytest

from mtl_tutorial.studies import config_hash, get_study
from mtl_tutorial.studies.hard_parameter_sharing import (
    HEAD_ONLY, LOG_ERROR, PRIMARY, log_ratios, partner_rows, run, scarce_split, synthetic_config, synthetic_label,
    transfer_config,
)
from mtl_tutorial.studies.runner import StudyResults


def test_primary_comparisons_name_runs_of_the_grid_in_both_modes():
    study = get_study("02")
    for fast in (False, True):
        labels = {c["label"] for c in study.configs((0, 1), fast=fast)}
        for comparison in PRIMARY:
            assert comparison.a in labels and comparison.b in labels
    assert len(study.default_seeds) >= 5


def test_scarce_split_draws_disjoint_sets_of_the_asked_sizes():
    train, validation = scarce_split(100, 10, 30, seed=3)
    assert len(train) == 10 and len(validation) == 30
    assert not set(train) & set(validation)
    assert (train < 100).all() and (validation < 100).all()
    again, _ = scarce_split(100, 10, 30, seed=3)
    other, _ = scarce_split(100, 10, 30, seed=4)
    np.testing.assert_array_equal(train, again)
    assert not np.array_equal(train, other)
    with pytest.raises(ValueError, match="fit in the 100"):
        scarce_split(100, 80, 30, seed=0)


def test_partner_on_the_same_texts_never_sees_the_validation_texts():
    held = np.array([1, 5, 7])
    same = partner_rows("pos", "supersense", 10, held)
    assert set(same) == set(range(10)) - {1, 5, 7}
    other = partner_rows("pos", "condition", 10, held)     # different texts: nothing to hold out
    np.testing.assert_array_equal(other, np.arange(10))


def _row(label, seed, value):
    return {"config": {"label": label, "seed": seed}, "metrics": {"scores": {LOG_ERROR: value}}}


def test_log_ratios_are_sharing_minus_single_task_paired_by_seed():
    rows = []
    for seed, (shared, alone) in enumerate([(1.0, 3.0), (2.0, 0.5)]):
        rows += [_row(synthetic_label("hard sharing", 0.0, 10), seed, shared),
                 _row(synthetic_label("single-task", 0.0, 10), seed, alone)]
    ratios = log_ratios(StudyResults(get_study("02"), rows, None), 10, correlations=(0.0,))
    np.testing.assert_allclose(ratios, [[-2.0], [1.5]])


def test_synthetic_run_scores_log2_of_the_mean_error_and_methods_share_their_start():
    metrics = {m: run(synthetic_config(m, 1.0, 20, seed=0, fast=True) | {"steps": 2, "lr": 0.0})[0]
               for m in ("single-task", "hard sharing")}
    for m in metrics.values():
        assert m["error"] == pytest.approx(np.mean(list(m["errors"].values())))
        assert m["scores"][LOG_ERROR] == pytest.approx(np.log2(m["error"]))
    # step size 0: both methods hold the same initial trunk and heads, so the same errors
    assert metrics["single-task"]["errors"] == pytest.approx(metrics["hard sharing"]["errors"])


def test_transfer_configs_differ_only_in_the_partner():
    a, b = transfer_config("pos", 50, None, 0), transfer_config("pos", 50, HEAD_ONLY, 0)
    assert {k for k in a if a[k] != b[k]} == {"label", "partner"}
    assert config_hash(a) != config_hash(b)
