"""Which code produced a study's results: the git commit of the package, and whether it was changed.

In a git checkout, ``git`` says it. A copy of the course without its ``.git`` (the folder a GPU machine
receives) proves it with a manifest written in the checkout beforehand, ``write_manifest``: the commit and
the SHA-256 of every tracked file of the package and of pyproject.toml. The copy counts as unchanged when
its files hash to the manifest's and it has no Python file the manifest lacks.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

PACKAGE_CHECKOUT = Path(__file__).resolve().parents[2]  # the folder holding the running mtl_tutorial
MANIFEST = Path("build") / "provenance.json"             # inside the checkout; build/ is not tracked
CODE_PATHS = ("mtl_tutorial", "pyproject.toml")


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _from_manifest(root: Path) -> dict:
    """Provenance of a copy without git, from its manifest (None for both without one)."""
    path = root / MANIFEST
    if not path.is_file():
        return {"commit": None, "code_changed": None}
    manifest = json.loads(path.read_text())
    files = manifest["files"]
    changed = any(not (root / name).is_file() or _sha256(root / name) != digest for name, digest in files.items())
    extra = [p for p in (root / "mtl_tutorial").rglob("*.py") if p.relative_to(root).as_posix() not in files]
    return {"commit": manifest["commit"], "code_changed": changed or bool(extra)}


def code_provenance(root: Path = PACKAGE_CHECKOUT) -> dict:
    """``{"commit": git HEAD or None, "code_changed": the package or pyproject differ from it}`` of the
    checkout whose ``mtl_tutorial`` is running; outside a git checkout, what its manifest proves (None for
    both without one: an installed copy)."""
    try:
        commit = _git(root, "rev-parse", "HEAD").strip()
        status = _git(root, "status", "--porcelain", "--", *CODE_PATHS)
    except (OSError, subprocess.CalledProcessError):
        return _from_manifest(root)
    return {"commit": commit, "code_changed": bool(status.strip())}


def write_manifest(root: Path = PACKAGE_CHECKOUT) -> Path:
    """Write ``build/provenance.json`` for a copy of this checkout to prove its code with; returns its path.

    Refuses a checkout whose package has uncommitted changes: the manifest would name a commit that did
    not hold the code.
    """
    try:
        commit = _git(root, "rev-parse", "HEAD").strip()
        changed = _git(root, "status", "--porcelain", "--", *CODE_PATHS).strip()
        tracked = _git(root, "ls-files", "--", *CODE_PATHS).split("\n")
    except (OSError, subprocess.CalledProcessError):
        raise RuntimeError(f"{root} is not a git checkout: write the manifest where git can name the commit") from None
    if changed:
        raise RuntimeError("the package has uncommitted changes (git status mtl_tutorial pyproject.toml): commit them first")
    files = {name: _sha256(root / name) for name in tracked if name and (root / name).is_file()}
    path = root / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"commit": commit, "files": files}, indent=1, sort_keys=True) + "\n")
    return path
