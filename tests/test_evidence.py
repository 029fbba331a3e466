"""Intervals over seeds and paired comparisons: values against hand computations and t tables."""

import math

import numpy as np
import pytest
from scipy import stats

from mtl_tutorial.evidence import (
    Comparison,
    Interval,
    compare_family,
    compare_paired,
    equivalent,
    family_intervals,
    holm,
    mean_interval,
    paired_difference,
    paired_p_value,
    paired_power,
    score_table,
    seeds_for_power,
    smallest_equivalent,
    t_critical,
    verdict,
)


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


@pytest.mark.parametrize(("df", "confidence", "expected"), [(4, 0.99, 4.604), (10, 0.90, 1.812), (40, 0.95, 2.021), (100, 0.99, 2.626)])
def test_t_critical_at_other_levels(df, confidence, expected):  # 95 % with df <= 30 stays the printed table (above)
    assert t_critical(df, confidence) == pytest.approx(expected, abs=1e-3)
    assert t_critical(df, confidence) == pytest.approx(stats.t.ppf(1 - (1 - confidence) / 2, df))
    for wrong in (95, 0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="confidence must be a number strictly between 0 and 1"):
            t_critical(df, wrong)


def test_intervals_at_a_chosen_level():
    interval = mean_interval([1.0, 2.0, 3.0], confidence=0.99)
    half = 9.925 / math.sqrt(3)  # t_{0.995, 2}
    assert (interval.low, interval.high) == pytest.approx((2.0 - half, 2.0 + half), abs=1e-3)
    d90, d95 = (paired_difference([0.7, 0.6, 0.8, 0.65], [0.69, 0.62, 0.77, 0.6], c) for c in (0.90, 0.95))
    assert d90.mean == d95.mean and d95.low < d90.low < d90.high < d95.high


def test_paired_p_value_by_hand():
    # d = (1, 2, 4): mean 7/3, s² = 7/3, so t = √7; for df = 2 the two-sided p is 1 − |t| / √(t² + 2)
    assert paired_p_value([1.0, 2.0, 4.0], [0.0, 0.0, 0.0]) == pytest.approx(1 - math.sqrt(7) / 3)
    a, b = [0.71, 0.69, 0.74, 0.70, 0.73], [0.70, 0.70, 0.71, 0.68, 0.70]
    d = np.subtract(a, b)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(5))
    p = paired_p_value(a, b)
    assert p == pytest.approx(2 * stats.t.sf(abs(t), 4))
    assert paired_difference(a, b, confidence=1 - p).low == pytest.approx(0.0, abs=1e-12)  # the (1 − p) interval touches 0
    assert paired_p_value([1.0, 2.0, 3.0], [0.0, 1.0, 2.0]) == 0.0  # every difference exactly 1: sd 0, certain
    assert paired_p_value([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 1.0  # every difference exactly 0
    with pytest.raises(ValueError, match="same number of values"):
        paired_p_value([1.0, 2.0], [1.0])


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 → 4·0.005, 3·0.01, max(0.03, 2·0.03), max(0.06, 1·0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6, 0.9]) == pytest.approx([1.0, 1.0, 1.0])  # capped at 1
    assert holm([0.02]) == pytest.approx([0.02])  # one comparison: nothing to adjust
    p = np.random.default_rng(0).uniform(0, 0.2, size=12)
    adjusted = holm(p)
    assert (adjusted >= p).all() and (adjusted <= 1).all()
    assert (np.diff(adjusted[np.argsort(p)]) >= 0).all()  # monotone in p
    for wrong, message in (([], "non-empty 1-d"), ([[0.1, 0.2]], "non-empty 1-d"), ([0.1, 1.2], r"lie in \[0, 1\]"),
                           ([-0.1], r"lie in \[0, 1\]"), ([float("nan")], r"lie in \[0, 1\]")):
        with pytest.raises(ValueError, match=message):
            holm(wrong)


def _simulated_power(rng, n, delta, sd=1.0, families=4000, alpha=0.05):
    d = rng.normal(delta, sd, size=(families, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    return float((np.abs(t) > stats.t.ppf(1 - alpha / 2, n - 1)).mean())


def test_seeds_for_power_against_a_simulation():
    rng = np.random.default_rng(0)
    n = seeds_for_power(1.0, 1.5, minimum=2)
    assert n == 6
    assert _simulated_power(rng, n, 1.5) >= 0.8 - 0.02
    assert _simulated_power(rng, n - 1, 1.5) < 0.8 + 0.02
    for seeds in (3, 5, 8):
        assert paired_power(seeds, 1.0, 1.5) == pytest.approx(_simulated_power(rng, seeds, 1.5), abs=0.02)
    assert paired_power(5, 1.0, 0.0) == pytest.approx(0.05)  # no true difference: power is the false-positive rate
    assert seeds_for_power(1.0, 1.5) == 6 and seeds_for_power(1.0, 5.0) == 5  # never fewer than minimum = 5


def test_seeds_for_power_says_what_to_change():
    with pytest.raises(ValueError, match="needs more than 100 seeds.*a larger delta or a less noisy measurement"):
        seeds_for_power(1.0, 0.1)
    for kwargs, message in (({"difference_sd": 0.0}, "difference_sd must be > 0"), ({"delta": -1.0}, "delta must be > 0"),
                            ({"power": 1.0}, "power must be"), ({"minimum": 1}, "minimum must be an int >= 2"),
                            ({"maximum": 3}, "maximum must be an int >= minimum")):
        with pytest.raises(ValueError, match=message):
            seeds_for_power(**{"difference_sd": 1.0, "delta": 1.0, **kwargs})
    with pytest.raises(ValueError, match="n must be an int >= 2"):
        paired_power(1, 1.0, 1.0)


def test_equivalent_needs_the_90_percent_interval_inside_the_margin():
    b = np.array([0.70, 0.60, 0.80, 0.65, 0.75])
    assert equivalent(b + [0.001, -0.001, 0.0005, 0.0, -0.0005], b, margin=0.01)  # tight around 0
    wide = b + [0.02, -0.02, 0.015, -0.018, 0.01]
    assert verdict(paired_difference(wide, b)) == "no measurable difference" and not equivalent(wide, b, margin=0.01)
    assert not equivalent(b + [0.012, 0.013, 0.012, 0.011, 0.012], b, margin=0.01)  # a real difference beyond the margin
    d = b + [-0.01, 0.0, 0.01, 0.005, -0.005]
    d90, d95 = paired_difference(d, b, 0.90), paired_difference(d, b, 0.95)
    margin = (d90.high + d95.high) / 2  # inside the 95 % interval, outside the 90 % one: TOST at α = 0.05 uses 90 %
    assert equivalent(d, b, margin) and not equivalent(d, b, d90.high * 0.99)
    with pytest.raises(ValueError, match="margin must be > 0"):
        equivalent(b, b, margin=0.0)


def test_smallest_equivalent_picks_the_smallest_size_shown_equivalent_to_the_best():
    base = np.array([0.86, 0.88, 0.87, 0.85, 0.89])
    tight = np.array([0.001, -0.001, 0.0005, 0.0, -0.0005])
    scores = {1: base - 0.004 + tight, 2: base - 0.002 - tight, 8: base, 64: base - 0.03 + tight}
    assert smallest_equivalent(scores, margin=0.01) == 1
    # the best size is 8, not the largest: comparing with the largest (64, 3 points lower) would pick wrongly
    assert smallest_equivalent({1: base - 0.03 + tight, 8: base, 64: base - 0.031 - tight}, margin=0.01) == 8
    # close means are not enough: size 1 is noisy (no TOST equivalence), so the rule keeps looking
    noisy = base + np.array([0.03, -0.03, 0.025, -0.028, 0.0])
    assert abs(noisy.mean() - base.mean()) < 0.01
    assert smallest_equivalent({1: noisy, 2: base - 0.001 + tight, 8: base}, margin=0.01) == 2
    assert smallest_equivalent({8: base}, margin=0.01) == 8
    with pytest.raises(ValueError, match="scores is empty"):
        smallest_equivalent({}, margin=0.01)


def test_comparison_names_its_task_or_the_mean():
    assert str(Comparison("LoRA r=8", "frozen features")) == "LoRA r=8 − frozen features (mean)"
    assert str(Comparison("LoRA r=8", "frozen features", "supersense")) == "LoRA r=8 − frozen features (supersense)"


SCORES = {"A": {"pos": [0.81, 0.82, 0.83], "sup": [0.61, 0.62, 0.63]},
          "B": {"pos": [0.80, 0.80, 0.80], "sup": [0.60, 0.60, 0.60]},
          "C": {"pos": [0.70, 0.72, 0.71], "sup": [0.50, 0.52, 0.51]}}


def test_compare_family_by_hand():
    # exploratory p: A − C (pos) 0.0027, B − C (sup) 0.0041, A − B (mean) 0.074; Holm: 3·0.0027, max(·, 2·0.0041), 0.074;
    # none stops before the last rank, so the levels are 1 − 0.05/3, 1 − 0.05/2, 1 − 0.05/1
    lines = compare_family(SCORES, [Comparison("A", "C", "pos"), Comparison("B", "C", "sup"), Comparison("A", "B")],
                           primary=[Comparison("A", "B", "pos")])
    assert lines == [
        "primary      A − B (pos) = +2.00 [-0.48, +4.48] pts (95 % interval, n = 3 seeds): no measurable difference",
        "exploratory  A − C (pos) = +11.00 [+6.58, +15.42] pts (98.3 % Holm-adjusted interval, p_Holm = 0.0082, n = 3 seeds): A better",
        "exploratory  B − C (sup) = +9.00 [+5.42, +12.58] pts (97.5 % Holm-adjusted interval, p_Holm = 0.0082, n = 3 seeds): B better",
        "exploratory  A − B (mean) = +2.00 [-0.48, +4.48] pts (95 % Holm-adjusted interval, p_Holm = 0.074, n = 3 seeds): no measurable difference",
    ]


def test_compare_family_without_a_better_says_higher():
    lines = compare_family(SCORES, [Comparison("A", "C", "pos"), Comparison("C", "A", "pos")], scale=1.0, unit="",
                           higher_is_better=None)
    assert lines[0].endswith("n = 3 seeds): A higher") and lines[1].endswith("n = 3 seeds): A higher")
    assert "(pos) = +0.11 [" in lines[0] and "(pos) = -0.11 [" in lines[1]   # scale 1: the values' own units


def test_family_intervals_primary_comparisons_keep_their_95_percent_interval():
    primary = [Comparison("A", "B", "pos"), Comparison("A", "C")]
    results = family_intervals(SCORES, [Comparison("B", "C", "sup")], primary=primary)
    assert [(r.comparison, r.role) for r in results] == [(primary[0], "primary"), (primary[1], "primary"),
                                                         (Comparison("B", "C", "sup"), "exploratory")]
    for result in results[:2]:
        a, b = (np.mean([SCORES[m][t] for t in ("pos", "sup")], axis=0) if result.comparison.task is None
                else SCORES[m][result.comparison.task] for m in result.comparison[:2])
        d = np.subtract(a, b)
        half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)  # the exact quantile, not the table's 4.303
        expected = Interval(d.mean(), d.mean() - half, d.mean() + half, d.std(ddof=1), 3)
        assert result.confidence == 0.95 and result.adjusted_p_value == result.p_value == pytest.approx(paired_p_value(a, b))
        assert result.interval == pytest.approx(Interval(*(100 * v for v in expected[:4]), 3))
        assert result.verdict == verdict(expected, result.comparison[:2])


def test_exploratory_intervals_agree_with_holm():
    rng = np.random.default_rng(1)
    methods, tasks = [f"m{i}" for i in range(5)], ["t0", "t1"]
    pairs = [Comparison(a, b, task) for i, a in enumerate(methods) for b in methods[i + 1:] for task in (None, *tasks)]
    agreements, rejected, clamp_mattered = 0, 0, 0
    for _ in range(120):
        n = int(rng.integers(3, 7))
        shift = rng.normal(0, 0.02, size=len(methods))
        seed_effect = rng.normal(0, 0.02, size=n)
        scores = {m: {t: 0.7 + shift[i] + seed_effect + rng.normal(0, 0.01, size=n) for t in tasks} for i, m in enumerate(methods)}
        chosen = [pairs[i] for i in rng.choice(len(pairs), size=int(rng.integers(2, 9)), replace=False)]
        results = family_intervals(scores, chosen[1:], primary=chosen[:1])
        exploratory = [r for r in results if r.role == "exploratory"]
        p = np.array([r.p_value for r in exploratory])
        assert [r.adjusted_p_value for r in exploratory] == pytest.approx(holm(p))
        for r in exploratory:
            assert (r.verdict != "no measurable difference") == (r.adjusted_p_value <= 0.05), r
            agreements += 1
            rejected += r.adjusted_p_value <= 0.05
        # would the level 1 − α/(m − j + 1) at every rank (no stop at j*) have disagreed with Holm here?
        m, ranked = len(p), np.sort(p)
        stops = np.flatnonzero(ranked > 0.05 / (m - np.arange(m)))
        clamp_mattered += bool(len(stops)) and any(ranked[j] <= 0.05 / (m - j) for j in range(stops[0] + 1, m))
    assert agreements > 400 and 0.2 < rejected / agreements < 0.8 and clamp_mattered > 0


def test_family_errors_say_what_to_fix():
    with pytest.raises(ValueError, match=r"unknown method 'D' in A − D \(mean\); the methods are \['A', 'B', 'C'\]"):
        family_intervals(SCORES, [Comparison("A", "D")])
    with pytest.raises(ValueError, match=r"unknown task 'ner'.*the tasks are \['pos', 'sup'\]"):
        family_intervals(SCORES, [Comparison("A", "B", "ner")])
    uneven = {**SCORES, "B": {"pos": [0.80, 0.80], "sup": [0.60, 0.60, 0.60]}}
    with pytest.raises(ValueError, match="same number of values.*'A' on 'pos' has 3, 'B' on 'pos' has 2"):
        family_intervals(uneven, [Comparison("A", "B")])
    with pytest.raises(ValueError, match="'C' has no scores for task"):
        family_intervals({**SCORES, "C": {"pos": [0.7, 0.7, 0.7]}}, [Comparison("A", "B")])
    with pytest.raises(ValueError, match="listed twice"):
        family_intervals(SCORES, [Comparison("A", "B")], primary=[Comparison("A", "B")])
    with pytest.raises(ValueError, match="no comparisons given"):
        family_intervals(SCORES, [])


TABLE_SCORES = {"LoRA r=8": {"pos": [0.90, 0.90, 0.93], "supersense": [0.70, 0.72, 0.74]},
                "frozen features": {"pos": [0.80, 0.82, 0.84], "supersense": [0.60, 0.61, 0.62]}}


def test_score_table_by_hand():
    # LoRA pos: 90, 90, 93 → 91 ± √3; per-seed means over tasks 80, 81, 83.5 → 81.5 ± √3.25
    table = score_table(TABLE_SCORES, majority={"pos": 0.45, "supersense": 0.30}, baselines=["frozen features"])
    assert table == (
        "method           pos         supersense  mean\n"
        "majority class   45.0        30.0        37.5\n"
        "frozen features  82.0 ± 2.0  61.0 ± 1.0  71.5 ± 1.5\n"
        "LoRA r=8         91.0 ± 1.7  72.0 ± 2.0  81.5 ± 1.8\n"
        "(test accuracy in %, mean ± std over 3 seeds)"
    )
    one_seed = {"LoRA r=8": {"pos": [0.9]}}
    assert score_table(one_seed, what="accuracy") == "method    pos   mean\nLoRA r=8  90.0  90.0\n(accuracy, 1 seed)"
    with pytest.raises(ValueError, match=r"baselines \['linear probe'\] are not methods"):
        score_table(TABLE_SCORES, baselines=["linear probe"])
    with pytest.raises(ValueError, match=r"majority has no accuracy for task\(s\) \['supersense'\]"):
        score_table(TABLE_SCORES, majority={"pos": 0.45})


def test_names_must_be_a_pair_and_quantities_without_a_better_get_neutral_words():
    with pytest.raises(TypeError, match=r"names must be a pair of strings .* got 'LoRA'"):
        compare_paired([0.7, 0.8], [0.6, 0.7], "LoRA", "adapters")
    with pytest.raises(TypeError, match="pair of strings"):
        verdict(Interval(0.1, 0.05, 0.15, 0.01, 3), ("A", "B", "C"))
    assert verdict(Interval(0.1, 0.05, 0.15, 0.01, 3), ("λ_1", "λ_2"), higher_is_better=None) == "λ_1 higher"
    assert verdict(Interval(-0.1, -0.15, -0.05, 0.01, 3), ("λ_1", "λ_2"), higher_is_better=None) == "λ_2 higher"
    line = compare_paired([0.7, 0.8, 0.75], [0.6, 0.7, 0.66], ("cos 1", "cos 2"), higher_is_better=None)
    assert line.endswith(": cos 1 higher")


def test_paired_power_stays_a_number_far_out_in_the_tails():
    from mtl_tutorial.evidence import paired_power

    assert paired_power(5, 0.56, 4.0) == pytest.approx(1.0, abs=1e-6)    # nc ≈ 16: scipy's lower tail is nan
    assert paired_power(5, 0.56, -4.0) == pytest.approx(1.0, abs=1e-6)
    assert 0.04 < paired_power(5, 1.0, 1e-9) < 0.06                      # no effect: the test's level
