"""The evidence behind a comparison: a mean over seeds with its 95 % interval, and paired differences.

For n repeats x_1..x_n (one per seed) the interval of the mean is Student's

    x̄ ± t_{0.975, n−1} · s / √n,      s² = Σ (x_i − x̄)² / (n − 1),

and a comparison of A and B run on the same seeds uses the paired differences d_i = a_i − b_i
(seed-to-seed variation that A and B share cancels). The verdict follows the interval: "A higher"
only when the whole interval of the mean difference lies above 0, "no measurable difference" when it
covers 0. Intervals need n ≥ 2; with few seeds t is large (t = 4.30 for n = 3), as it should be.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np

# two-sided 95 % critical values t_{0.975, df} of Student's t distribution, df = 1..30
_T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)


def t_critical(df: int) -> float:
    """t_{0.975, df}: the table for df ≤ 30, beyond it the expansion z + (z³ + z) / (4 df) (error < 0.002)."""
    if not isinstance(df, int) or df < 1:
        raise ValueError(f"degrees of freedom must be an int >= 1, got {df!r}; an interval needs at least 2 repeats")
    if df <= len(_T_975):
        return _T_975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df)


class Interval(NamedTuple):
    """A mean over n repeats and its 95 % interval [low, high]; std is the sample standard deviation."""

    mean: float
    low: float
    high: float
    std: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:+.4f} [{self.low:+.4f}, {self.high:+.4f}]"


def mean_interval(values: Sequence[float] | np.ndarray) -> Interval:
    """Mean of ``values`` (n,) with its 95 % Student-t interval (module docstring)."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or len(x) < 2:
        raise ValueError(f"need a 1-d sequence of at least 2 repeats (seeds) for an interval, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"values must be finite, got {x.tolist()}")
    mean, std = float(x.mean()), float(x.std(ddof=1))
    half = t_critical(len(x) - 1) * std / math.sqrt(len(x))
    return Interval(mean, mean - half, mean + half, std, len(x))


def paired_difference(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> Interval:
    """Mean of a_i − b_i over paired repeats (same seed i for A and B) with its 95 % interval."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired repeats need the same number of values, got {a.shape} and {b.shape}")
    return mean_interval(a - b)


def verdict(difference: Interval, names: tuple[str, str] = ("A", "B"), higher_is_better: bool = True) -> str:
    """The words an interval of a − b supports: ``"A better"``, ``"B better"`` or ``"no measurable difference"``."""
    if difference.low <= 0 <= difference.high:
        return "no measurable difference"
    a_higher = difference.low > 0
    return f"{names[0] if a_higher == higher_is_better else names[1]} better"


def compare_paired(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    names: tuple[str, str] = ("A", "B"),
    higher_is_better: bool = True,
    scale: float = 1.0,
    unit: str = "",
    repeats: str = "seeds",
) -> str:
    """One line for a chapter: ``A − B = +1.2 [+0.3, +2.1] pts (n = 5 seeds): A better``.

    ``scale`` multiplies the numbers shown (100 for accuracy in percentage points, with unit " pts");
    ``repeats`` names what the n paired values are (independent runs: seeds, held-out tasks).
    """
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    d = paired_difference(a, b)
    shown = Interval(*(value * scale for value in d[:4]), d.n)
    return (
        f"{names[0]} − {names[1]} = {shown.mean:+.2f} [{shown.low:+.2f}, {shown.high:+.2f}]{unit} "
        f"(95 % interval, n = {d.n} {repeats}): {verdict(d, names, higher_is_better)}"
    )
