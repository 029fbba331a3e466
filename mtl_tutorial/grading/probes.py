"""Probes: the grader's own questions to a learner's functions, answered in the sandbox, judged outside.

A ``Probe`` is a piece of Python that runs in a kernel after the notebook's cells: it builds inputs
from ``seed`` (an int the grader draws per batch, so no answer can be prepared for it), calls the
learner's function and leaves ``result`` (tensors, numbers, strings, None, and lists, tuples and
dicts of them). The same code runs in the instructor source's kernel; the two results are encoded as
JSON (``encode``), read back in the grader's process (``read_result``) and compared there (``judge``),
where nothing the learner's kernel did can reach. A learner who patches ``torch.allclose`` or the
visible tests changes nothing the grader reads except the values of their own functions.

The probe code sees the kernel's names (the learner's functions; ``torch`` etc. if the notebook
imported them: import what it needs itself) in a copy of the namespace, so it cannot overwrite them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

MAX_RESULT_BYTES = 2_000_000  # more than any probe result here: a bigger file is not read


@dataclass(frozen=True)
class Probe:
    """One graded part's question: ``code`` sets ``result`` from ``seed``; ``function`` names what it calls."""

    function: str
    code: str
    rtol: float = 1e-4
    atol: float = 1e-6


# -- encoding (runs in both kernels; the source of these two functions is sent there) ----------------


def encode(value: Any) -> Any:
    """A JSON-able copy of a probe result: tensors and arrays as {"tensor": dtype, "shape", "data"}."""
    import numbers

    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return {"float": repr(float(value))}  # repr keeps nan and inf, which JSON cannot
    if hasattr(value, "detach") and hasattr(value, "shape"):  # a torch tensor
        value = value.detach().cpu()
        return {"tensor": str(value.dtype).replace("torch.", ""), "shape": list(value.shape),
                "data": [repr(float(v)) for v in value.double().flatten().tolist()]}
    if hasattr(value, "dtype") and hasattr(value, "shape") and hasattr(value, "tolist"):  # a numpy array
        flat = value.reshape(-1).tolist()
        return {"tensor": str(value.dtype), "shape": list(value.shape), "data": [repr(float(v)) for v in flat]}
    if isinstance(value, (list, tuple)):
        return {"list": [encode(v) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[str(k), encode(v)] for k, v in value.items()]}
    return {"unsupported": type(value).__name__}


def read_result(path: Any) -> dict[str, Any] | None:
    """A probe's record {"result": ...} or {"error": ...} from an untrusted file; None if missing or unusable."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file() or path.stat().st_size > MAX_RESULT_BYTES:
        return None
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and ("result" in data or "error" in data) else None


# -- comparing (the grader's process only) ------------------------------------------------------------


def _float(text: Any) -> float:
    """A number from an untrusted encoded entry; anything else reads as nan (which matches nothing)."""
    try:
        return float(text) if isinstance(text, (str, int, float)) and not isinstance(text, bool) else math.nan
    except ValueError:
        return math.nan


def _describe(value: Any) -> str:
    if isinstance(value, dict) and "tensor" in value:
        return f"a tensor of shape {tuple(value.get('shape', ()))}"
    if isinstance(value, dict) and "list" in value:
        return f"a sequence of {len(value['list'])}"
    if isinstance(value, dict) and "dict" in value:
        return f"a dict with keys {', '.join(sorted(str(k) for k, _ in value['dict']))}"
    if isinstance(value, dict) and "float" in value:
        return "a number"
    if isinstance(value, dict) and "unsupported" in value:
        return f"a {value['unsupported']}"
    return "None" if value is None else f"a {type(value).__name__}"


def differences(reference: Any, learner: Any, rtol: float = 1e-4, atol: float = 1e-6, where: str = "") -> str:
    """'' when ``learner`` matches ``reference`` (both encoded), else where and how it differs.

    The reason never shows a reference value: shapes, types, keys and positions only, so feedback
    cannot be used to read the grader's answers. Numbers agree when |a - b| <= atol + rtol |b|; nan
    matches nan only where the reference has one.
    """
    label = where or "the result"
    if isinstance(reference, dict) and "tensor" in reference:
        if not (isinstance(learner, dict) and "tensor" in learner):
            return f"{label} should be a tensor of shape {tuple(reference['shape'])}, got {_describe(learner)}"
        if list(learner.get("shape", ())) != list(reference["shape"]):
            return f"{label} has shape {tuple(learner.get('shape', ()))}, expected {tuple(reference['shape'])}"
        mine, theirs = learner.get("data", []), reference["data"]
        if len(mine) != len(theirs):
            return f"{label} is malformed"
        for k, (a, b) in enumerate(zip(mine, theirs)):
            if not _close(_float(a), float(b), rtol, atol):
                return f"{label} differs from the reference at flat position {k}"
        return ""
    if isinstance(reference, dict) and "float" in reference:
        if isinstance(learner, bool) or not (isinstance(learner, int) or (isinstance(learner, dict) and "float" in learner)):
            return f"{label} should be a number, got {_describe(learner)}"
        value = float(learner) if isinstance(learner, int) else _float(learner["float"])
        return "" if _close(value, float(reference["float"]), rtol, atol) else f"{label} differs from the reference"
    if isinstance(reference, dict) and "list" in reference:
        if not (isinstance(learner, dict) and "list" in learner):
            return f"{label} should be {_describe(reference)}, got {_describe(learner)}"
        if len(learner["list"]) != len(reference["list"]):
            return f"{label} has {len(learner['list'])} entries, expected {len(reference['list'])}"
        for k, (a, b) in enumerate(zip(learner["list"], reference["list"])):
            reason = differences(b, a, rtol, atol, f"{label}[{k}]" if where else f"case {k + 1}")
            if reason:
                return reason
        return ""
    if isinstance(reference, dict) and "dict" in reference:
        if not (isinstance(learner, dict) and "dict" in learner):
            return f"{label} should be {_describe(reference)}, got {_describe(learner)}"
        mine, theirs = dict(map(tuple, learner["dict"])), dict(map(tuple, reference["dict"]))
        if set(mine) != set(theirs):
            return f"{label} has keys {', '.join(sorted(mine))}, expected {', '.join(sorted(theirs))}"
        for key in theirs:
            reason = differences(theirs[key], mine[key], rtol, atol, f"{label}[{key!r}]")
            if reason:
                return reason
        return ""
    if isinstance(reference, int) and not isinstance(reference, bool):
        if isinstance(learner, bool) or not isinstance(learner, int):
            if isinstance(learner, dict) and "float" in learner and _float(learner["float"]) == reference:
                return ""
            return f"{label} should be an integer, got {_describe(learner)}"
        return "" if learner == reference else f"{label} differs from the reference"
    if learner != reference:
        return f"{label} differs from the reference ({_describe(learner)})"
    return ""


def _close(a: float, b: float, rtol: float, atol: float) -> bool:
    if math.isnan(b):
        return math.isnan(a)
    if math.isinf(b):
        return a == b
    return not math.isnan(a) and abs(a - b) <= atol + rtol * abs(b)


def judge(reference: dict[str, Any] | None, mine: dict[str, Any] | None, probe: Probe) -> str:
    """'' when the learner's probe record matches the reference's (``read_result``'s records), else why not."""
    if reference is None or "result" not in reference:
        raise RuntimeError(f"the instructor source failed its own probe of {probe.function}: {reference}")
    if not isinstance(mine, dict):
        return f"the grader's check of {probe.function} did not run"
    if "error" in mine and str(mine["error"]).startswith("KeyboardInterrupt"):
        return f"{probe.function} did not finish on the grader's inputs within the time limit per cell"
    if "error" in mine:
        return f"{probe.function} raised {str(mine['error'])[:300]} on the grader's inputs"
    if "result" not in mine:
        return f"the grader's check of {probe.function} gave no result"
    reason = differences(reference["result"], mine["result"], probe.rtol, probe.atol)
    return f"{probe.function} on the grader's inputs: {reason}" if reason else ""


# -- the kernel side ----------------------------------------------------------------------------------


def probe_cell(grade_id: str, probe: Probe, seed: int, path: str) -> str:
    """The source of a code cell that runs ``probe`` (part ``grade_id``) and writes its result to ``path``.

    One cell per probe, so each has the notebook's time limit per cell; the file holds
    {"result": encoded value} or {"error": "Name: message"}.
    """
    import inspect
    import textwrap

    encoder = textwrap.indent(inspect.getsource(encode).replace("(value: Any) -> Any:", "(value):"), "    ")
    return "\n".join([
        "def __mtl_probe_run():",
        "    import json",
        encoder,
        f"    names = dict(globals()); names['seed'] = {int(seed)}",
        "    try:",
        f"        exec({probe.code!r}, names)",
        "        record = {'result': encode(names['result'])}",
        "    except BaseException as err:",
        "        record = {'error': f'{type(err).__name__}: {err}'[:500]}",
        f"    with open({path!r}, 'w') as handle:",
        "        json.dump(record, handle)",
        "__mtl_probe_run()",
        "del __mtl_probe_run",
    ])


def result_file(grade_id: str) -> str:
    """The file name a probe's cell writes (in the runner's output folder)."""
    if not grade_id.replace("_", "").isalnum():
        raise ValueError(f"a grade_id is letters, digits and underscores, got {grade_id!r}")
    return f"probe_{grade_id}.json"
