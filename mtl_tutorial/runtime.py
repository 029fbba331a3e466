"""Where and how a chapter runs: device, seeds, fast/full mode.

Environment variables (read at call time, so a notebook or test can change them):

- ``MTL_TUTORIAL_DEVICE``: force a device (``cpu``, ``cuda``, ``cuda:1``, ``mps``).
- ``MTL_TUTORIAL_FAST``: ``1`` runs every chapter in fast mode (CI, smoke tests).
- ``MTL_TUTORIAL_CACHE``: where cached files go (``cache_dir``).
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def fast_mode() -> bool:
    """True when ``MTL_TUTORIAL_FAST`` asks for the fast (CI-sized) run of a chapter."""
    value = os.environ.get("MTL_TUTORIAL_FAST", "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(
        f"MTL_TUTORIAL_FAST={value!r} is not understood; set it to 1 (fast mode) or 0 (full mode)"
    )


def by_mode(fast: T, full: T) -> T:
    """Pick a size by mode: ``num_steps = by_mode(fast=20, full=2000)``."""
    return fast if fast_mode() else full


def check_device(
    device: torch.device | str,
    name: str = "device",
    hint: str = "use 'cpu', or mtl_tutorial.runtime.get_device() for the best device this machine has",
) -> torch.device:
    """``device`` as a ``torch.device`` when this machine has it, else an error that names ``name``
    (who asked: an argument or an environment variable) and ends with ``hint`` (what to do)."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{name}={device!r} is not a device; use cpu, cuda, cuda:N or mps") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{name}={str(device)!r} but torch sees no CUDA GPU; {hint}")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise RuntimeError(f"{name}={str(device)!r} but only {torch.cuda.device_count()} GPU(s) exist; {hint}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"{name}={str(device)!r} but MPS is not available; {hint}")
    return device


def get_device() -> torch.device:
    """The device chapters train on: ``MTL_TUTORIAL_DEVICE`` if set, else cuda > mps > cpu.

    A forced device that this machine lacks is an error rather than a silent fallback to the CPU.
    """
    forced = os.environ.get("MTL_TUTORIAL_DEVICE", "").strip()
    if forced:
        return check_device(forced, "MTL_TUTORIAL_DEVICE", hint="unset it to use the CPU")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> int:
    """Seed Python's ``random``, NumPy and torch (CPU and every GPU); returns the seed.

    Same seed, same machine, same numbers: the chapters call this once per experiment.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return seed


def environment_summary() -> str:
    """One line per fact a chapter's first cell shows: versions, device and mode."""
    import platform

    import transformers

    try:
        import peft

        peft_version = peft.__version__
    except ImportError:
        peft_version = "not installed"
    return "\n".join(
        [
            f"python        {platform.python_version()}",
            f"torch         {torch.__version__}",
            f"transformers  {transformers.__version__}",
            f"peft          {peft_version}",
            f"device        {get_device()}",
            f"mode          {'fast' if fast_mode() else 'full'}",
        ]
    )


def project_root() -> Path:
    """The course folder (with ``notebooks/`` and ``README.md``).

    ``MTL_TUTORIAL_ROOT`` overrides; else the folder above this package (an editable install,
    as README.md sets up); else the current folder or one above it.
    """
    candidates = []
    if os.environ.get("MTL_TUTORIAL_ROOT"):
        candidates.append(Path(os.environ["MTL_TUTORIAL_ROOT"]))
    candidates.append(Path(__file__).resolve().parents[1])
    cwd = Path.cwd().resolve()
    candidates.extend([cwd, *cwd.parents])
    for folder in candidates:
        if (folder / "notebooks").is_dir() and (folder / "README.md").is_file():
            return folder
    raise FileNotFoundError(
        "cannot find the course folder (one with notebooks/ and README.md); run the command from "
        "inside your clone of mtl-tutorial or set MTL_TUTORIAL_ROOT to its path"
    )


def cache_dir() -> Path:
    """Where cached files live (frozen features, the decoder of chapter 12): ``MTL_TUTORIAL_CACHE`` if set,
    else the user's cache folder.

    Linux ``$XDG_CACHE_HOME/mtl_tutorial`` (``~/.cache/mtl_tutorial``), macOS
    ``~/Library/Caches/mtl_tutorial``, Windows ``%LOCALAPPDATA%\\mtl_tutorial\\Cache``.
    """
    override = os.environ.get("MTL_TUTORIAL_CACHE", "").strip()
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "mtl_tutorial" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "mtl_tutorial"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mtl_tutorial"
