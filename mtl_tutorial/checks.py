"""One-line equality checks for notebooks, after Karpathy's ``cmp``: is our result the reference's?

The printed verdict depends only on whether max |ours - reference| is within ``atol``, never on the
difference itself, so a checked notebook output reads the same on every machine and thread count
(the last bits of a matmul move with the number of threads; a tolerance of 1e-5 does not).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch


def compare(
    name: str, ours: Any, reference: Any, atol: float = 1e-5, expect: Literal["equal", "different"] = "equal"
) -> float:
    """Print a verdict on d = max |ours - reference| and return d.

    expect="equal":      ``name: equal within 1e-05`` (d <= atol), or
                         ``name: DIFFERENT (max abs diff 3.2e-03 > atol 1e-05)``;
    expect="different":  ``name: different by more than 1e-05, as expected`` (d > atol), or
                         ``name: EQUAL within 1e-05 (max abs diff 2.0e-06), but a difference was expected``.
    A NaN in d (a NaN or an infinity on either side) prints ``NOT COMPARABLE``.
    ours, reference: tensors, arrays or numbers of the same shape (compared in float64 on the CPU).
    """
    if expect not in ("equal", "different"):
        raise ValueError(f"expect must be 'equal' or 'different', got {expect!r}")
    ours_t = torch.as_tensor(ours).detach().cpu().double()
    reference_t = torch.as_tensor(reference).detach().cpu().double()
    if ours_t.shape != reference_t.shape:
        raise ValueError(
            f"{name}: shapes differ, ours {tuple(ours_t.shape)} vs reference {tuple(reference_t.shape)}"
        )
    difference = (ours_t - reference_t).abs().max().item() if ours_t.numel() else 0.0
    if math.isnan(difference):
        verdict = "NOT COMPARABLE (max abs diff nan: a NaN or an infinity in ours or the reference)"
    elif expect == "equal":
        verdict = f"equal within {atol:g}" if difference <= atol else (
            f"DIFFERENT (max abs diff {difference:.1e} > atol {atol:g})"
        )
    else:
        verdict = f"different by more than {atol:g}, as expected" if difference > atol else (
            f"EQUAL within {atol:g} (max abs diff {difference:.1e}), but a difference was expected"
        )
    print(f"{name}: {verdict}")
    return difference
