"""One-line equality checks for notebooks, after Karpathy's ``cmp``: is our result the reference's?"""

from __future__ import annotations

from typing import Any

import torch


def compare(name: str, ours: Any, reference: Any, atol: float = 1e-5) -> float:
    """Print ``name: exact``, ``name: close (max abs diff 3.2e-07)`` (max |ours - reference| <= atol)
    or ``name: DIFFERENT (max abs diff ...)``; return max |ours - reference|.

    ours, reference: tensors, arrays or numbers of the same shape (compared in float64 on the CPU).
    """
    ours_t = torch.as_tensor(ours).detach().cpu().double()
    reference_t = torch.as_tensor(reference).detach().cpu().double()
    if ours_t.shape != reference_t.shape:
        raise ValueError(
            f"{name}: shapes differ, ours {tuple(ours_t.shape)} vs reference {tuple(reference_t.shape)}"
        )
    difference = (ours_t - reference_t).abs().max().item() if ours_t.numel() else 0.0
    if difference == 0.0:
        print(f"{name}: exact")
    elif difference <= atol:
        print(f"{name}: close (max abs diff {difference:.1e})")
    else:
        print(f"{name}: DIFFERENT (max abs diff {difference:.1e})")
    return difference
