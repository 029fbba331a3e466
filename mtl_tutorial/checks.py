"""One-line equality checks for notebooks, after Karpathy's ``cmp``: is our result the reference's?

The printed verdict depends only on whether max |ours - reference| is within ``atol``, never on the
difference itself, so a checked notebook output reads the same on every machine and thread count
(the last bits of a matmul move with the number of threads; a tolerance of 1e-5 does not).

Also the argument checks that every floor shares (``check_task_data``, ``check_batch_size``,
``check_count``, ``is_real_number``, and the command lines' ``int_argument`` and ``float_argument``): the
data module, the loop and the methods (``relations``) check a task's data the same way, and a method
may not import the data module (DESIGN.md, "Architecture").
"""

from __future__ import annotations

import argparse
import math
import numbers
from typing import Any, Callable, Literal, Mapping

import torch
from torch.utils.data import Dataset


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


def _is_pair(item: Any) -> bool:
    return isinstance(item, (tuple, list)) and len(item) == 2


def check_task_data(task: str, data: tuple[Any, Any] | Dataset) -> int:
    """N_t, the number of examples of one task's data: ``(inputs, targets)`` of equal length, or a
    ``Dataset`` whose items are ``(input, target)`` pairs. Raises when the lengths differ, there is no
    example, or the data is neither."""
    if isinstance(data, tuple):
        if len(data) != 2:
            raise ValueError(f"task {task!r} must be an (inputs, targets) pair, got a tuple of {len(data)} items")
        for name, part in zip(("inputs", "targets"), data):
            if isinstance(part, Mapping) or not hasattr(part, "__len__"):
                raise TypeError(
                    f"the {name} of task {task!r} must be a tensor or a list with one entry per example, got "
                    f"{type(part).__name__}"
                )
        inputs, targets = data
        if len(inputs) != len(targets):
            raise ValueError(
                f"task {task!r} has {len(inputs)} inputs but {len(targets)} targets; they must match"
            )
    elif not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        raise TypeError(
            f"task {task!r} must be an (inputs, targets) tuple or a Dataset of (input, target) pairs, got "
            f"{type(data).__name__}"
        )
    elif len(data) and not _is_pair(data[0]):
        raise TypeError(
            f"the items of task {task!r} must be (input, target) pairs, but its first item is a "
            f"{type(data[0]).__name__}; to give inputs and targets, pass the tuple (inputs, targets), not a list "
            f"or a tensor"
        )
    size = len(data[1]) if isinstance(data, tuple) else len(data)
    if size == 0:
        raise ValueError(f"task {task!r} has no examples; give it at least one (input, target) pair")
    return size


def check_batch_size(batch_size: int) -> None:
    """Raise unless ``batch_size`` is a positive int (not a bool)."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def check_count(name: str, value: Any, minimum: int = 1) -> None:
    """Raise unless ``value`` is an int >= ``minimum`` (a bool is not a count): TypeError for the type,
    ValueError for the value, both naming ``name``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def is_real_number(value: Any) -> bool:
    """A real number (Python or numpy) that is not a bool: True is not a weight."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def int_argument(minimum: int, unit: str = "") -> Callable[[str], int]:
    """An argparse ``type``: a whole number >= ``minimum``, so that a command refuses a bad value by its
    option's name before it starts work (``--steps 0``: "'0' is not a whole number >= 1"; with
    ``unit="seconds"``: "'0' is not a whole number of seconds >= 1")."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number{f' of {unit}' if unit else ''} >= {minimum}")
        return value
    return parse


def float_argument(low: float, high: float = math.inf, low_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite number in [low, high] ((low, high] with ``low_open``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or not (value > low if low_open else value >= low) or not value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number in {'(' if low_open else '['}{low:g}, "
                                             f"{high:g}{')' if math.isinf(high) else ']'}")
        return value
    return parse
