"""Intervals over seeds and paired comparisons: values against hand computations and t tables."""

import math

import pytest

from mtl_tutorial.evidence import Interval, compare_paired, mean_interval, paired_difference, t_critical, verdict


@pytest.mark.parametrize(("df", "expected"), [(1, 12.706), (2, 4.303), (4, 2.776), (30, 2.042), (40, 2.021), (60, 2.000), (120, 1.980)])
def test_t_critical_matches_the_t_table(df, expected):
    assert t_critical(df) == pytest.approx(expected, abs=2e-3)


def test_mean_interval_by_hand():
    interval = mean_interval([1.0, 2.0, 3.0])  # mean 2, sample std 1 (n - 1 in the denominator)
    half = 4.303 / math.sqrt(3)
    assert interval == pytest.approx(Interval(2.0, 2.0 - half, 2.0 + half, 1.0, 3))
    with pytest.raises(ValueError, match="at least 2 repeats"):
        mean_interval([1.0])
    with pytest.raises(ValueError, match="must be finite"):
        mean_interval([1.0, float("nan")])


def test_paired_difference_cancels_what_the_seeds_share():
    a = [0.70, 0.60, 0.80, 0.65]
    b = [0.68, 0.58, 0.78, 0.63]  # every seed 0.02 lower: unpaired the spread would hide it
    d = paired_difference(a, b)
    assert d.mean == pytest.approx(0.02) and d.std == pytest.approx(0.0, abs=1e-12)
    assert verdict(d, ("A", "B")) == "A better"
    assert mean_interval(b).high > mean_interval(a).low  # the unpaired intervals overlap
    with pytest.raises(ValueError, match="same number of values"):
        paired_difference([1.0, 2.0], [1.0])


def test_verdict_follows_the_interval_and_the_direction():
    assert verdict(Interval(0.01, -0.002, 0.022, 0.01, 5)) == "no measurable difference"
    assert verdict(Interval(-0.03, -0.05, -0.01, 0.01, 5), ("joint", "sequential")) == "sequential better"
    assert verdict(Interval(-0.03, -0.05, -0.01, 0.01, 5), ("joint", "sequential"), higher_is_better=False) == "joint better"


def test_compare_paired_prints_the_scaled_difference_n_and_the_verdict():
    line = compare_paired([0.70, 0.72, 0.71], [0.60, 0.61, 0.63], ("joint", "alone"), scale=100, unit=" pts")
    d = paired_difference([0.70, 0.72, 0.71], [0.60, 0.61, 0.63])
    assert line == (f"joint − alone = {100 * d.mean:+.2f} [{100 * d.low:+.2f}, {100 * d.high:+.2f}] pts "
                    f"(95 % interval, n = 3 seeds): joint better")
    assert compare_paired([1.0, 2.0], [0.0, 0.5], repeats="tasks").endswith("(95 % interval, n = 2 tasks): no measurable difference")
    with pytest.raises(ValueError, match="scale must be > 0"):
        compare_paired([1.0, 2.0], [1.0, 2.0], scale=-1)
