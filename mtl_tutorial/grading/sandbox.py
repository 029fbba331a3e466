"""Each submission runs in its own sandbox, under limits, and ends in a reason, never in a crash.

On Linux, Debian's ``bubblewrap`` (``bwrap``, no root needed) gives the runner and its kernel: their own
PID, network, IPC and UTS namespaces (no network, no view of other processes), a read-only view of
the Python environment and of this package and ``data/``, a private size-limited ``/tmp`` and working
folder, and one writable output folder. The instructor sources, other submissions and the grader's
files are not in the sandbox at all. Limits (``Limits``): wall time for the whole submission, address
space, bytes per written file; the grader reads back only size-checked files.

Without bubblewrap, ``run_sandboxed(..., unsafe=True)`` runs the same runner as a plain process with
the same limits: the learner's code then sees this machine as the grader does (``mtl-tutorial grade
--unsafe-no-sandbox``, for a teacher's own test runs only).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mtl_tutorial.grading.runner import EXECUTED_FILE, STATUS_FILE

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Per submission: cell_timeout_s per cell; wall_s for the whole run; memory_bytes of address space
    for the runner and its kernel; file_bytes per written file; notebook_bytes of the handed-in file."""

    cell_timeout_s: int = 30
    wall_s: int = 600
    memory_bytes: int = 6 * 1024 * MiB  # torch reserves much address space it never touches
    file_bytes: int = 64 * MiB
    notebook_bytes: int = 16 * MiB
    tmp_bytes: int = 256 * MiB

    def __post_init__(self) -> None:
        for name in ("cell_timeout_s", "wall_s", "memory_bytes", "file_bytes", "notebook_bytes", "tmp_bytes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be a positive integer, got {getattr(self, name)!r}")


@dataclass
class SandboxRun:
    """How one run ended: ``ended`` "normally" or why not (a sentence for the teacher); ``out``: its files."""

    ended: str
    out: Path


class SandboxUnavailable(RuntimeError):
    """No bubblewrap here (or it cannot create namespaces); the message says what to do."""


def bubblewrap_problem() -> str:
    """'' when bubblewrap can run a sandbox here, else why not (and how to get it)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return ("bubblewrap is not installed: on Debian/Ubuntu `sudo apt install bubblewrap` (it needs no root to "
                "run); elsewhere grade inside a container or VM with --unsafe-no-sandbox")
    probe = subprocess.run([bwrap, "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "true"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return (f"bubblewrap cannot create a sandbox here ({probe.stderr.strip()[:200]}); unprivileged user "
                "namespaces may be off (sysctl kernel.unprivileged_userns_clone=1)")
    return ""


def _package_dir() -> Path:
    import mtl_tutorial

    return Path(mtl_tutorial.__file__).resolve().parent


def _readable_roots() -> list[Path]:
    """What the sandbox may read: the interpreter's prefixes, this package, data/."""
    package = _package_dir()
    roots = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), Path(sys.exec_prefix).resolve(), package}
    data = package.parent / "data"
    if data.is_dir():
        roots.add(data)
    return sorted(roots)


def _bwrap_command(work: Path, out: Path, tmp_bytes: int) -> list[str]:
    command = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--die-with-parent", "--new-session",
               "--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc", "--proc", "/proc", "--dev", "/dev",
               # the private /tmp first: binds that follow (a venv or the package under /tmp) land on top of it
               "--size", str(tmp_bytes), "--tmpfs", "/tmp"]
    for link in ("bin", "lib", "lib64", "sbin"):
        if Path("/" + link).is_symlink():
            command += ["--symlink", os.readlink("/" + link), "/" + link]
        elif Path("/" + link).is_dir():
            command += ["--ro-bind", "/" + link, "/" + link]
    for root in _readable_roots():
        if not str(root).startswith("/usr/"):
            command += ["--ro-bind", str(root), str(root)]
    command += ["--size", str(tmp_bytes), "--tmpfs", "/submission",
                "--ro-bind", str(work), "/submission/in",
                "--bind", str(out), "/out", "--chdir", "/submission"]
    return command


def _limit(limits: Limits):
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def run_sandboxed(notebook: Path, grade_ids: list[str], seed: int, limits: Limits, unsafe: bool = False) -> SandboxRun:
    """Run ``notebook`` and the probes of ``grade_ids`` in a fresh sandbox; the files land in ``SandboxRun.out``.

    The caller deletes ``out``'s parent folder (``SandboxRun.out.parent``) when done with it.
    """
    if not unsafe:
        problem = bubblewrap_problem()
        if problem:
            raise SandboxUnavailable(problem)
    base = Path(tempfile.mkdtemp(prefix="mtl-grade-"))
    work, out = base / "in", base / "out"
    work.mkdir()
    out.mkdir()
    shutil.copyfile(notebook, work / "submission.ipynb")
    runner = [sys.executable, "-m", "mtl_tutorial.grading.runner"]
    options = ["--timeout", str(limits.cell_timeout_s), "--seed", str(seed), "--probes", ",".join(grade_ids)]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(_package_dir().parent),  # the package, however it was installed
           "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1"}
    if unsafe:
        scratch = base / "tmp"
        scratch.mkdir()
        command = runner + [str(work / "submission.ipynb"), str(out)] + options
        env.update(HOME=str(scratch), TMPDIR=str(scratch))
        cwd = work
    else:
        command = _bwrap_command(work, out, limits.tmp_bytes) + runner + ["/submission/in/submission.ipynb", "/out"] + options
        env.update(HOME="/tmp", TMPDIR="/tmp")
        cwd = None
    with open(base / "stderr.txt", "wb") as stderr:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                                   preexec_fn=_limit(limits), start_new_session=True)
        try:
            process.wait(timeout=limits.wall_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return SandboxRun(f"stopped after {limits.wall_s} s, the time limit for a whole submission", out)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    return SandboxRun(_how_it_ended(out, process.returncode, base / "stderr.txt"), out)


def _how_it_ended(out: Path, returncode: int, stderr: Path) -> str:
    status_file = out / STATUS_FILE
    if status_file.is_file() and status_file.stat().st_size < 100_000:
        try:
            status = json.loads(status_file.read_text())
        except ValueError:
            status = {}
        if isinstance(status, dict) and status.get("ended") == "normally" and (out / EXECUTED_FILE).is_file():
            return "normally"
        if isinstance(status, dict) and status.get("ended") == "DeadKernelError":
            return "the kernel died in an earlier cell (a crash, os._exit, or running out of memory)"
        if isinstance(status, dict) and status.get("ended") == "CellTimeoutError":
            return "a cell ran past the time limit per cell and ignored the interrupt, which ends the run"
        if isinstance(status, dict) and status.get("ended"):
            first = (str(status.get("message", "")).strip().splitlines() or [""])[0][:200]
            return f"the run stopped early ({str(status.get('ended'))[:80]}: {first})"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"the sandbox was killed by {name} (the memory limit or a file-size limit?)"
    tail = stderr.read_bytes()[-300:].decode(errors="replace").strip().splitlines()[-1:] if stderr.is_file() else []
    return f"the sandbox ended without a result (exit {returncode}{': ' + tail[0] if tail else ''})"
