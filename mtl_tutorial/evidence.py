"""The evidence behind a comparison: a mean over seeds with its interval, paired differences, a family
of comparisons tested together, equivalence, and how many seeds a study needs.

For n repeats x_1..x_n (one per seed) the interval of the mean at confidence 1 − α (95 % by default)
is Student's

    x̄ ± t_{1−α/2, n−1} · s / √n,      s² = Σ (x_i − x̄)² / (n − 1),

and a comparison of A and B run on the same seeds uses the paired differences d_i = a_i − b_i
(seed-to-seed variation that A and B share cancels). The verdict follows the interval: "A higher"
only when the whole interval of the mean difference lies above 0, "no measurable difference" when it
covers 0. Intervals need n ≥ 2; with few seeds t is large (t = 4.30 for n = 3), as it should be.
The same statistic t = d̄ / (s_d / √n) is the paired t-test of H0: E[d] = 0, with two-sided
p = 2 · P(T_{n−1} > |t|): the 1 − α interval excludes 0 exactly when p < α (with the exact t quantile;
the 95 % intervals of ``mean_interval`` use the printed 3-decimal t table for n ≤ 31, as the chapters do).

Many comparisons. The primary comparisons, declared before the study ran, are each tested at level α.
Every further (exploratory) comparison is one more look, and m looks at level α each find "something"
by chance with probability up to 1 − (1 − α)^m. Holm's step-down procedure (Holm 1979) keeps that
family-wise error ≤ α: sort the m p-values p_(1) ≤ … ≤ p_(m) and reject where

    p_Holm(j) = max_{i ≤ j} min(1, (m − i + 1) · p_(i))  ≤  α.

Holm stops at the first rank j* with p_(j*) > α / (m − j* + 1). The interval shown for rank j uses
confidence 1 − α / (m − j + 1) before j* and 1 − α / (m − j* + 1) from j* on, so it excludes 0
exactly when Holm rejects (ties at the boundary p = α / (m − j + 1) aside).

Equivalence. An interval covering 0 says the data cannot tell A from B, not that they are equal: too
few or too noisy seeds "find no difference" between any two methods. Two one-sided tests (TOST) at
level α conclude |E[d]| < margin when the 1 − 2α interval (90 % for α = 0.05) lies inside
(−margin, +margin).

Seeds. With n paired seeds whose differences have standard deviation σ_d and true mean δ, t follows a
noncentral t distribution with df = n − 1 and noncentrality nc = δ / σ_d · √n, so the power of the
two-sided test at level α is

    power(n) = 1 − F_nct(t_c; n − 1, nc) + F_nct(−t_c; n − 1, nc),      t_c = t_{1−α/2, n−1},

and a study needs the smallest n with power(n) ≥ the target (0.8 by convention).
"""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Sequence

import numpy as np
from scipy import stats

# two-sided 95 % critical values t_{0.975, df} of Student's t distribution, df = 1..30, as printed in t tables
_T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)

Scores = Mapping[str, Mapping[str, Sequence[float]]]  # {method: {task: [value per seed]}}, seeds paired by position


def _check_level(value: float, name: str, example: str) -> None:
    if not 0 < value < 1:
        raise ValueError(f"{name} must be a number strictly between 0 and 1 ({example}), got {value!r}")


def _t_exact(df: int, confidence: float) -> float:
    return float(stats.t.ppf(1 - (1 - confidence) / 2, df))


def t_critical(df: int, confidence: float = 0.95) -> float:
    """t_{1−α/2, df} with α = 1 − confidence: the half-width of the interval in standard errors (2.776 for df = 4 at 95 %).

    At 95 % with df ≤ 30 the printed table (3 decimals, within 5e-4 of the exact quantile), elsewhere
    ``scipy.stats.t.ppf``.
    """
    if not isinstance(df, int) or df < 1:
        raise ValueError(f"degrees of freedom must be an int >= 1, got {df!r}; an interval needs at least 2 repeats")
    _check_level(confidence, "confidence", "e.g. 0.95 for a 95 % interval")
    if confidence == 0.95 and df <= len(_T_975):
        return _T_975[df - 1]
    return _t_exact(df, confidence)


class Interval(NamedTuple):
    """A mean over n repeats and its interval [low, high] (95 % unless asked otherwise); std is the sample standard deviation."""

    mean: float
    low: float
    high: float
    std: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:+.4f} [{self.low:+.4f}, {self.high:+.4f}]"


def _repeats(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """``values`` as a float array (n,), checked: 1-d, n ≥ 2, finite."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or len(x) < 2:
        raise ValueError(f"need a 1-d sequence of at least 2 repeats (seeds) for an interval, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"values must be finite, got {x.tolist()}")
    return x


def _differences(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> np.ndarray:
    """d_i = a_i − b_i (n,) for paired repeats (same seed i for A and B)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired repeats need the same number of values, got {a.shape} and {b.shape}")
    return _repeats(a - b)


def _interval(x: np.ndarray, t: float) -> Interval:
    """x̄ ± t · s / √n for checked repeats x (n,)."""
    mean, std = float(x.mean()), float(x.std(ddof=1))
    half = t * std / math.sqrt(len(x))
    return Interval(mean, mean - half, mean + half, std, len(x))


def mean_interval(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> Interval:
    """Mean of ``values`` (n,) with its Student-t interval at ``confidence`` (module docstring)."""
    x = _repeats(values)
    return _interval(x, t_critical(len(x) - 1, confidence))


def paired_difference(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> Interval:
    """Mean of a_i − b_i over paired repeats (same seed i for A and B) with its interval at ``confidence``."""
    return mean_interval(_differences(a, b), confidence)


def paired_p_value(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Two-sided p of the paired t-test of H0: E[a_i − b_i] = 0 (``scipy.stats.ttest_1samp`` on the differences).

    When every difference is the same number (s = 0), t is undefined and scipy returns nan; p is then
    0.0 if that number is non-zero and 1.0 if it is 0, as the zero-width interval [d, d] says.
    """
    d = _differences(a, b)
    if np.all(d == d[0]):
        return 0.0 if d[0] != 0 else 1.0
    return float(stats.ttest_1samp(d, 0.0).pvalue)


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (m,), in the input order (module docstring; Holm 1979).

    Reject comparison i at family-wise level α when adjusted[i] ≤ α.
    Example: p = (0.01, 0.04, 0.03, 0.005) gives (0.03, 0.06, 0.06, 0.02).
    """
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1 or len(p) == 0:
        raise ValueError(f"holm needs a non-empty 1-d sequence of p-values, got shape {p.shape}")
    if not ((p >= 0) & (p <= 1)).all():
        raise ValueError(f"p-values must lie in [0, 1], got {p.tolist()}")
    m = len(p)
    order = np.argsort(p, kind="stable")
    steps = np.minimum(1.0, (m - np.arange(m)) * p[order])  # (m − i + 1) · p_(i) for ranks i = 1..m
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(steps)
    return adjusted


def _holm_confidences(p: np.ndarray, alpha: float) -> np.ndarray:
    """Confidence (m,) of each exploratory interval, so that it excludes 0 exactly when Holm rejects (module docstring)."""
    m = len(p)
    order = np.argsort(p, kind="stable")
    remaining = m - np.arange(m)  # m − j + 1 for ranks j = 1..m
    stops = np.flatnonzero(p[order] > alpha / remaining)
    if len(stops):
        remaining[stops[0]:] = remaining[stops[0]]  # from the rank j* where Holm stops on, one level
    confidence = np.empty(m)
    confidence[order] = 1 - alpha / remaining
    return confidence


def paired_power(n: int, difference_sd: float, delta: float, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test at level ``alpha`` with n seeds when the differences have mean ``delta``
    and standard deviation ``difference_sd`` (noncentral t, module docstring)."""
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2 (paired seeds), got {n!r}")
    if not difference_sd > 0:
        raise ValueError(
            f"difference_sd must be > 0 (the standard deviation of a_i − b_i over seeds, e.g. from a pilot run), got {difference_sd!r}"
        )
    _check_level(alpha, "alpha", "e.g. 0.05")
    df, nc = n - 1, delta / difference_sd * math.sqrt(n)
    tc = stats.t.ppf(1 - alpha / 2, df)
    # each tail on its own (sf, not 1 − cdf); scipy returns nan for a tail too far out to matter: it is 0
    upper, lower = (float(np.nan_to_num(tail, nan=0.0)) for tail in (stats.nct.sf(tc, df, nc), stats.nct.cdf(-tc, df, nc)))
    return min(1.0, upper + lower)


def seeds_for_power(
    difference_sd: float,
    delta: float,
    power: float = 0.8,
    alpha: float = 0.05,
    minimum: int = 5,
    maximum: int = 100,
) -> int:
    """The smallest number of seeds n in [minimum, maximum] with ``paired_power(n, difference_sd, delta, alpha) ≥ power``.

    ``delta`` is the smallest true mean difference worth detecting and ``difference_sd`` the standard
    deviation of the paired differences a_i − b_i (both in the units of the scores, e.g. from a pilot run).
    """
    if not difference_sd > 0:
        raise ValueError(f"difference_sd must be > 0 (the spread of a_i − b_i over seeds), got {difference_sd!r}")
    if not delta > 0:
        raise ValueError(f"delta must be > 0 (the smallest difference worth detecting), got {delta!r}")
    _check_level(power, "power", "e.g. 0.8")
    if not isinstance(minimum, int) or minimum < 2:
        raise ValueError(f"minimum must be an int >= 2, since a paired t-test needs at least 2 seeds, got {minimum!r}")
    if not isinstance(maximum, int) or maximum < minimum:
        raise ValueError(f"maximum must be an int >= minimum = {minimum}, got {maximum!r}")
    for n in range(minimum, maximum + 1):
        if paired_power(n, difference_sd, delta, alpha) >= power:
            return n
    reached = paired_power(maximum, difference_sd, delta, alpha)
    raise ValueError(
        f"detecting delta = {delta:g} with power {power:g} at alpha = {alpha:g}, when the paired differences vary "
        f"by sd = {difference_sd:g}, needs more than {maximum} seeds ({maximum} give power {reached:.2f}); "
        f"a larger delta or a less noisy measurement (a smaller difference_sd, e.g. from a larger test set) needs fewer"
    )


def equivalent(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, margin: float) -> bool:
    """Whether A and B are equivalent within ±margin: two one-sided tests (TOST) at α = 0.05 on a_i − b_i,
    i.e. whether the 90 % interval of the mean difference lies inside (−margin, +margin).

    "No measurable difference" is not equivalence: too few or too noisy seeds say that about any two
    methods. This is the test that can say "equivalent within ±margin". Choose ``margin`` (in the units of
    the scores, e.g. 0.01 for one point of accuracy) before looking at the results.
    """
    if not margin > 0:
        raise ValueError(f"margin must be > 0 (the largest difference that does not matter), got {margin!r}")
    d = paired_difference(a, b, confidence=0.90)
    return -margin < d.low and d.high < margin


def smallest_equivalent(scores: Mapping[float, Sequence[float] | np.ndarray], margin: float) -> float:
    """The smallest size whose scores are equivalent within ±margin (``equivalent``, TOST) to those of the
    best size: a rule for choosing a capacity knob (LoRA's r, an adapter's m) from a sweep.

    scores: size -> per-seed scores, paired by seed across sizes (same seeds, same order). The best size
    is the one with the highest mean; it is its own answer when no smaller size is shown equivalent.
    Sizes above the best are never chosen: they cost more and score lower on average.
    """
    if not scores:
        raise ValueError("scores is empty: pass {size: per-seed scores} for at least one size")
    means = {size: float(np.mean(_repeats(values))) for size, values in scores.items()}
    best = max(means, key=means.get)
    for size in sorted(s for s in scores if s < best):
        if equivalent(scores[size], scores[best], margin):
            return size
    return best


def _check_names(names: tuple[str, str]) -> None:
    if isinstance(names, str) or len(names) != 2 or not all(isinstance(name, str) for name in names):
        raise TypeError(f"names must be a pair of strings (name of A, name of B), e.g. names=('LoRA', 'adapters'); "
                        f"got {names!r}")


def verdict(difference: Interval, names: tuple[str, str] = ("A", "B"), higher_is_better: bool | None = True) -> str:
    """The words an interval of a − b supports: ``"A better"``, ``"B better"`` or ``"no measurable difference"``.

    higher_is_better=None: for quantities with no "better" (weights, cosines), ``"A higher"`` or ``"B higher"``.
    """
    _check_names(names)
    if difference.low <= 0 <= difference.high:
        return "no measurable difference"
    a_higher = difference.low > 0
    if higher_is_better is None:
        return f"{names[0] if a_higher else names[1]} higher"
    return f"{names[0] if a_higher == higher_is_better else names[1]} better"


def _scaled(interval: Interval, scale: float) -> Interval:
    """``interval`` with mean, low, high and std multiplied by ``scale`` (> 0), e.g. 100 for percentage points."""
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    return Interval(*(value * scale for value in interval[:4]), interval.n)


def _numbers(shown: Interval) -> str:
    return f"{shown.mean:+.2f} [{shown.low:+.2f}, {shown.high:+.2f}]"


def compare_paired(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    names: tuple[str, str] = ("A", "B"),
    higher_is_better: bool | None = True,
    scale: float = 1.0,
    unit: str = "",
    repeats: str = "seeds",
) -> str:
    """One line for a chapter: ``A − B = +1.2 [+0.3, +2.1] pts (n = 5 seeds): A better`` (``"A higher"``
    with higher_is_better=None, for quantities that have no "better").

    ``scale`` multiplies the numbers shown (100 for accuracy in percentage points, with unit " pts");
    ``repeats`` names what the n paired values are (independent runs: seeds, held-out tasks).
    """
    _check_names(names)
    d = paired_difference(a, b)
    shown = _scaled(d, scale)
    return (
        f"{names[0]} − {names[1]} = {_numbers(shown)}{unit} "
        f"(95 % interval, n = {d.n} {repeats}): {verdict(d, names, higher_is_better)}"
    )


class Comparison(NamedTuple):
    """A − B on one task, or on the per-seed mean over the tasks when ``task`` is None."""

    a: str
    b: str
    task: str | None = None

    def __str__(self) -> str:
        return f"{self.a} − {self.b} ({'mean' if self.task is None else self.task})"


class FamilyResult(NamedTuple):
    """One comparison of a family: its interval (scaled), p, Holm-adjusted p (= p for a primary comparison),
    the interval's confidence, its role ("primary" or "exploratory") and the verdict of the interval."""

    comparison: Comparison
    interval: Interval
    p_value: float
    adjusted_p_value: float
    confidence: float
    role: str
    verdict: str


def _score_arrays(scores: Scores, tasks: Sequence[str] | None) -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
    """The tasks (default: those of the first method) and each method's scores as an array (tasks, seeds),
    checked: every method has every task, and every (method, task) the same number of seeds."""
    if not scores:
        raise ValueError("scores is empty; give {method: {task: [value per seed]}}")
    tasks = tuple(next(iter(scores.values())) if tasks is None else tasks)
    if not tasks:
        raise ValueError("no tasks to compare on; give scores with at least one task, or name the tasks")
    arrays, first = {}, None
    for method, per_task in scores.items():
        missing = [task for task in tasks if task not in per_task]
        if missing:
            raise ValueError(f"method {method!r} has no scores for task(s) {missing}; its tasks are {list(per_task)}")
        rows = [np.asarray(per_task[task], dtype=float) for task in tasks]
        for task, row in zip(tasks, rows):
            if row.ndim != 1 or len(row) == 0 or not np.isfinite(row).all():
                raise ValueError(f"scores of {method!r} on {task!r} must be a non-empty 1-d sequence of finite values, got {per_task[task]!r}")
            if first is None:
                first = (method, task, len(row))
            elif len(row) != first[2]:
                raise ValueError(
                    f"every method needs the same number of values (seeds, paired by position) on every task: "
                    f"{first[0]!r} on {first[1]!r} has {first[2]}, {method!r} on {task!r} has {len(row)}"
                )
        arrays[method] = np.stack(rows)
    return tasks, arrays


def family_intervals(
    scores: Scores,
    comparisons: Sequence[Comparison],
    primary: Sequence[Comparison] = (),
    tasks: Sequence[str] | None = None,
    alpha: float = 0.05,
    scale: float = 100.0,
    higher_is_better: bool | None = True,
) -> list[FamilyResult]:
    """The results of a study's comparisons: the ``primary`` ones (declared before the study ran) first, each
    at confidence 1 − alpha (95 %), then the exploratory ``comparisons`` with Holm-adjusted p-values and intervals
    that agree with them (module docstring), both in the order given.

    ``scores`` maps method → task → values ordered by seed; a comparison with task None uses the per-seed
    mean over ``tasks`` (default: the tasks of the first method, in order). Intervals are multiplied by ``scale``.
    higher_is_better: as in ``verdict`` (None for quantities with no "better", such as task weights).
    """
    _check_level(alpha, "alpha", "e.g. 0.05")
    primary, exploratory = [Comparison(*c) for c in primary], [Comparison(*c) for c in comparisons]
    if not primary and not exploratory:
        raise ValueError("no comparisons given; list them as Comparison(a, b, task) in comparisons (or primary)")
    everything = primary + exploratory
    for i, comparison in enumerate(everything):
        if comparison in everything[:i]:
            raise ValueError(f"{comparison} is listed twice; a comparison is either primary or exploratory, once")
    tasks, arrays = _score_arrays(scores, tasks)

    def values(method: str, comparison: Comparison) -> np.ndarray:
        if method not in arrays:
            raise ValueError(f"unknown method {method!r} in {comparison}; the methods are {list(arrays)}")
        if comparison.task is None:
            return arrays[method].mean(axis=0)
        if comparison.task not in tasks:
            raise ValueError(f"unknown task {comparison.task!r} in {comparison}; the tasks are {list(tasks)} (or None for their mean)")
        return arrays[method][tasks.index(comparison.task)]

    pairs = [(values(c.a, c), values(c.b, c)) for c in everything]
    p = np.array([paired_p_value(a, b) for a, b in pairs])
    k = len(primary)
    adjusted = np.concatenate([p[:k], holm(p[k:]) if exploratory else []])
    confidence = np.concatenate([np.full(k, 1 - alpha), _holm_confidences(p[k:], alpha)])
    results = []
    for i, (comparison, (a, b)) in enumerate(zip(everything, pairs)):
        # the exact t quantile, not the 3-decimal table, so that the interval agrees with p to the last digit
        d = _differences(a, b)
        shown = _scaled(_interval(d, _t_exact(len(d) - 1, confidence[i])), scale)
        results.append(FamilyResult(
            comparison, shown, float(p[i]), float(adjusted[i]), float(confidence[i]),
            "primary" if i < k else "exploratory", verdict(shown, (comparison.a, comparison.b), higher_is_better),
        ))
    return results


def compare_family(
    scores: Scores,
    comparisons: Sequence[Comparison],
    primary: Sequence[Comparison] = (),
    tasks: Sequence[str] | None = None,
    alpha: float = 0.05,
    scale: float = 100.0,
    unit: str = " pts",
    repeats: str = "seeds",
    higher_is_better: bool | None = True,
) -> list[str]:
    """``family_intervals`` as one line per comparison, e.g.

    ``primary      LoRA r=8 − frozen features (mean) = +5.91 [+5.10, +6.72] pts (95 % interval, n = 5 seeds): LoRA r=8 better``
    ``exploratory  Houlsby − Pfeiffer (pos) = +0.40 [-0.90, +1.70] pts (99.2 % Holm-adjusted interval, p_Holm = 0.61, n = 5 seeds): no measurable difference``
    """
    lines = []
    for result in family_intervals(scores, comparisons, primary, tasks, alpha, scale, higher_is_better):
        level = f"{100 * result.confidence:.1f}".removesuffix(".0") + " %"
        if result.role == "primary":
            level += " interval"
        else:
            level += f" Holm-adjusted interval, p_Holm = {result.adjusted_p_value:.2g}"
        lines.append(
            f"{result.role:<12} {result.comparison} = {_numbers(result.interval)}{unit} "
            f"({level}, n = {result.interval.n} {repeats}): {result.verdict}"
        )
    return lines


def _mean_std(values: np.ndarray, scale: float) -> str:
    """``"82.2 ± 0.4"`` for values (n,) times ``scale`` (std with n − 1); the mean alone for one value."""
    x = scale * values
    return f"{x.mean():.1f}" + (f" ± {x.std(ddof=1):.1f}" if len(x) > 1 else "")


def score_table(
    scores: Scores,
    tasks: Sequence[str] | None = None,
    majority: Mapping[str, float] | None = None,
    baselines: Sequence[str] = (),
    scale: float = 100.0,
    what: str = "test accuracy in %",
) -> str:
    """Mean ± std over seeds of every method on every task and on the per-seed mean over tasks, as aligned text:

        method           pos         supersense  mean
        majority class   45.0        30.0        37.5
        frozen features  82.0 ± 2.0  61.0 ± 1.0  71.5 ± 1.5
        LoRA r=8         91.0 ± 1.7  72.0 ± 2.0  81.5 ± 1.8
        (test accuracy in %, mean ± std over 3 seeds)

    Rows: "majority class" from ``majority`` ({task: accuracy of always predicting the most frequent class})
    when given, then the ``baselines`` in the order given, then the other methods in the order of ``scores``.
    """
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    tasks, arrays = _score_arrays(scores, tasks)
    unknown = [method for method in baselines if method not in arrays]
    if unknown:
        raise ValueError(f"baselines {unknown} are not methods in scores; the methods are {list(arrays)}")
    rows = []
    if majority is not None:
        missing = [task for task in tasks if task not in majority]
        if missing:
            raise ValueError(f"majority has no accuracy for task(s) {missing}; give one for each of {list(tasks)}")
        chance = [scale * majority[task] for task in tasks]
        rows.append(["majority class", *(f"{c:.1f}" for c in chance), f"{np.mean(chance):.1f}"])
    for method in dict.fromkeys([*baselines, *arrays]):  # baselines first, then the rest, each once
        x = arrays[method]  # (tasks, seeds)
        rows.append([method, *(_mean_std(row, scale) for row in x), _mean_std(x.mean(axis=0), scale)])
    rows.insert(0, ["method", *tasks, "mean"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    n = next(iter(arrays.values())).shape[1]
    return "\n".join([*lines, f"({what}, mean ± std over {n} seeds)" if n > 1 else f"({what}, 1 seed)"])
