"""``check_close``: the helper the assignments' visible test cells call to explain a wrong value."""

from __future__ import annotations

import math
from typing import Any, Sequence



def check_close(
    name: str,
    yours: Any,
    expected: Any,
    hint: str = "",
    labels: Sequence[str] | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> None:
    """Raise an AssertionError that names the worst entry unless ``yours`` equals ``expected``.

    ``check_close("α", yours, expected, hint="did you project onto the original gradient?",
    labels=["task 1", "task 2"])`` fails with "your α for task 2 is 0.3100, expected 0.5200: did you
    project onto the original gradient?". Entries agree when |yours - expected| <= atol + rtol |expected|.
    """
    import torch

    def as_tensor(value: Any) -> torch.Tensor:
        return torch.as_tensor(value.detach() if isinstance(value, torch.Tensor) else value).cpu()

    try:
        mine = as_tensor(yours)
    except (TypeError, ValueError, RuntimeError):
        raise AssertionError(f"your {name} is a {type(yours).__name__}, expected a tensor or a number") from None
    reference = as_tensor(expected)
    show = (lambda v: str(bool(v))) if reference.dtype == torch.bool else (lambda v: f"{v:.4f}")
    mine, reference = mine.double(), reference.double()
    suffix = f": {hint}" if hint else ""
    if mine.shape != reference.shape:
        raise AssertionError(f"your {name} has shape {tuple(mine.shape)}, expected {tuple(reference.shape)}{suffix}")
    if mine.numel() == 0:
        return
    gap = (mine - reference).abs()
    bad = ~(gap <= atol + rtol * reference.abs())  # a nan in yours counts as bad
    if not bool(bad.any()):
        return
    flat = int(torch.where(bad.flatten(), gap.flatten().nan_to_num(math.inf), -1.0).argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), mine.shape)) if mine.dim() else ()
    if labels is not None and len(index) == 1:
        where = f" for {labels[index[0]]}"
    else:
        where = f"[{', '.join(map(str, index))}]" if index else ""
    raise AssertionError(
        f"your {name}{where} is {show(mine[index].item())}, expected {show(reference[index].item())}{suffix}"
    )
