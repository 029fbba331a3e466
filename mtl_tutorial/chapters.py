"""The course's chapters: where they are, what README.md says about them, and running them headless.

A chapter is a notebook ``notebooks/NN_slug.ipynb``. Its title and measured runtimes live in one
place, the chapter table of README.md, which ``mtl-tutorial list`` reads. ``run_notebook`` executes
one with nbclient, with a time limit per cell and a shell channel that cannot miss a cell's reply,
and writes it with its progress bars as text (``progress_bars_as_text``).

Nothing is lost: a run writes its notebook only when every cell ran (atomically: a temporary file in the
same folder, then a rename), and records its mode in the notebook's metadata (``recorded_mode``); a run
that fails, times out or is interrupted writes what ran to a separate partial copy, whose cells that
never ran are empty.
"""

from __future__ import annotations

import atexit
import html
import os
import re
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.channels import AsyncZMQSocketChannel
from traitlets import Type

from mtl_tutorial.runtime import project_root  # noqa: F401  (the course folder; chapters' home for it before)

CHAPTER_FILE = re.compile(r"^(\d\d)_[a-z0-9_]+\.ipynb$")
TABLE_ROW = re.compile(r"^\|\s*(\d\d)\s*\|(.*)\|\s*$")
POLL_SLICE_S = 0.5  # longest wait on the kernel's shell socket before looking again
IOPUB_TIMEOUT_S = 30  # how long a finished cell's outputs may trail its reply (4 s is tight under load)
KERNEL_STDERR_LINES = 5  # a dead kernel's last lines on its own stderr that a failure message quotes
_TIMED_OUT = "CellTimeout"  # ename of the error nbclient reports for a cell interrupted at its timeout
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"  # an output showing a widget
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"  # notebook metadata: every widget model's state
PROGRESS_MODELS = {"FloatProgressModel", "IntProgressModel"}
BAR_WIDTH = 10  # characters of the drawn bar, as tqdm draws one when it knows no width
RUN_METADATA = "mtl_tutorial"  # notebook metadata written by run_notebook: {"mode": "fast" | "full"}
MODE_LINE = re.compile(r"^mode\s+(fast|full)\s*$", re.MULTILINE)  # environment_summary()'s line in a first cell


@dataclass
class Chapter:
    """One row of README.md's chapter table, plus the notebook file when it exists."""

    number: str
    title: str
    learn: str = ""
    runtimes: dict[str, str] = field(default_factory=dict)
    path: Path | None = None


def _cell_text(cell: str) -> str:
    """Markdown link ``[Title](notebooks/x.ipynb)`` -> ``Title``."""
    return re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", cell).strip()


def read_chapter_table(readme: Path) -> list[Chapter]:
    """Parse README.md's table ``| NN | title | what you learn | fast CPU | full CPU | full GPU |``."""
    chapters = []
    for line in readme.read_text(encoding="utf-8").splitlines():
        match = TABLE_ROW.match(line.strip())
        if not match:
            continue
        cells = [_cell_text(c) for c in match.group(2).split("|")]
        if len(cells) != 5:
            raise ValueError(
                f"README.md chapter row {match.group(1)} has {len(cells) + 1} columns, expected 6: "
                "number | title | what you learn | fast CPU | full CPU | full GPU"
            )
        title, learn, fast_cpu, full_cpu, full_gpu = cells
        chapters.append(
            Chapter(
                match.group(1),
                title,
                learn,
                {"fast CPU": fast_cpu, "full CPU": full_cpu, "full GPU": full_gpu},
            )
        )
    return chapters


def list_chapters(root: Path | None = None, language: str = "en") -> list[Chapter]:
    """Every chapter in README.md's table, with ``path`` set where the notebook exists; ``language="zh"``:
    README.zh-CN.md's table and the Chinese edition's notebooks (notebooks/zh/)."""
    root = root or project_root()
    if language not in ("en", "zh"):
        raise ValueError(f"language must be 'en' or 'zh', got {language!r}")
    readme, folder = ("README.md", root / "notebooks") if language == "en" else ("README.zh-CN.md", root / "notebooks" / "zh")
    chapters = read_chapter_table(root / readme)
    files = {p.name[:2]: p for p in sorted(folder.glob("*.ipynb")) if CHAPTER_FILE.match(p.name)}
    for chapter in chapters:
        chapter.path = files.get(chapter.number)
    return chapters


def resolve_chapters(names: list[str], root: Path | None = None) -> list[Path]:
    """Turn ``["00", "02_hard_parameter_sharing", "path/to/x.ipynb"]`` into notebook paths.

    No names means every chapter notebook, in order.
    """
    root = root or project_root()
    available = {
        p.name[:2]: p for p in sorted((root / "notebooks").glob("*.ipynb")) if CHAPTER_FILE.match(p.name)
    }
    if not names:
        return [available[k] for k in sorted(available)]
    paths = []
    for name in names:
        if name.endswith(".ipynb"):
            path = Path(name)
            if not path.is_file():
                raise FileNotFoundError(f"notebook {name} does not exist")
        else:
            number = name[:2].zfill(2) if name[:2].isdigit() else name.zfill(2)
            if number not in available:
                raise ValueError(
                    f"unknown chapter {name!r}; chapters are: {', '.join(sorted(available))} "
                    "(give a number like 00 or a path to a .ipynb file)"
                )
            path = available[number]
        paths.append(path)
    return paths


class ChapterFailed(RuntimeError):
    """A chapter stopped early (a cell raised or timed out, or the kernel died); carries where."""

    def __init__(self, notebook: Path, cell_index: int | None, code_cell_number: int | None, error: str,
                 saved: Path):
        self.notebook, self.cell_index, self.code_cell_number = notebook, cell_index, code_cell_number
        self.error, self.saved = error, saved
        where = "before its first cell" if cell_index is None else (
            f"in cell {cell_index} (code cell {code_cell_number})")
        super().__init__(
            f"{notebook.name} failed {where}: {error}\n"
            f"the partly executed notebook is saved at {saved}"
        )


class PatientShellChannel(AsyncZMQSocketChannel):
    """The kernel client's shell channel, waiting for a reply in slices of at most ``POLL_SLICE_S``.

    While nbclient waits on the shell socket for a cell's reply, it sends widget updates on that
    same socket, and jupyter_client sends them through a blocking shadow of the asyncio socket.
    Such a send can swallow the socket's edge-triggered wake-up, so a reply that lands meanwhile
    sits unread until the wait times out (nbclient #312, jupyter_client #1059). Every slice ends
    with a direct poll of the socket, which finds such a reply.
    """

    async def get_msg(self, timeout: float | None = None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = POLL_SLICE_S if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await super().get_msg(timeout=min(POLL_SLICE_S, left))
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise


class PatientKernelClient(AsyncKernelClient):
    """The kernel client ``run_notebook`` hands to nbclient: ``PatientShellChannel`` on the shell."""

    shell_channel_class = Type(PatientShellChannel)


class ChapterInterrupted(RuntimeError):
    """A run stopped by the user (Ctrl-C, SIGINT); carries where, and where what ran was saved."""

    def __init__(self, notebook: Path, code_cell_number: int | None, saved: Path):
        self.notebook, self.code_cell_number, self.saved = notebook, code_cell_number, saved
        where = "before its first cell" if code_cell_number is None else f"in code cell {code_cell_number}"
        super().__init__(f"{notebook.name} was interrupted {where}; what ran is saved at {saved}")


def recorded_mode(notebook: dict) -> str | None:
    """The mode ("fast" or "full") of the run that wrote ``notebook`` (an nbformat node or its JSON
    dict): the metadata ``run_notebook`` writes, else the ``mode`` line a chapter's first cell prints
    (``environment_summary``), else None (never executed, or not a chapter)."""
    mode = notebook.get("metadata", {}).get(RUN_METADATA, {}).get("mode")
    if mode is not None:
        return mode
    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            text = output.get("text", "")
            found = MODE_LINE.search(text if isinstance(text, str) else "".join(text))
            if found:
                return found.group(1)
    return None


def _write_atomically(notebook, output: Path) -> None:
    """Write ``notebook`` to ``output`` through a temporary file in the same folder and a rename, so
    that ``output`` holds either its old bytes or the new notebook, never a torn one."""
    import nbformat

    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        nbformat.write(notebook, temporary)
        os.replace(temporary, output)
    finally:
        temporary.unlink(missing_ok=True)


def default_cell_timeout() -> int:
    """Seconds one cell may run: 600 in fast mode, 1800 in full mode (a chapter takes ~15 min)."""
    from mtl_tutorial.runtime import by_mode

    return by_mode(fast=600, full=1800)


def _describe(err: Exception, timeout: int, kernel_stderr: str = "") -> str:
    """What went wrong, in the words ``ChapterFailed`` prints after the cell's position; a dead kernel's
    last lines on its own stderr (``kernel_stderr``, the process's, not a cell's) are quoted."""
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    if getattr(err, "ename", None) == _TIMED_OUT:
        return (f"still running after {timeout} s, the limit per cell, so it was interrupted "
                "(allow more with mtl-tutorial run --timeout SECONDS)")
    if isinstance(err, CellExecutionError):
        return f"{err.ename}: {err.evalue}"
    if isinstance(err, DeadKernelError):
        last_words = [line for line in kernel_stderr.splitlines()   # less the kernel app's routine log
                      if line.strip() and not re.match(r"\[IPKernelApp\] (INFO|WARNING) \|", line)]
        last_words = last_words[-KERNEL_STDERR_LINES:]
        said = "; its last words on stderr: " + " | ".join(last_words) if last_words else ""
        return ("the kernel died while running it (out of memory, or a crash in compiled code); "
                f"run the chapter in JupyterLab to see more{said}")
    return f"the kernel stopped answering ({err})"


def _references(value) -> set[str]:
    """Model ids that a widget state (or an output list) refers to: ``"IPY_MODEL_<id>"`` strings
    (children, layout, style) and the ``model_id`` of widget views (inside an Output widget)."""
    found: set[str] = set()
    if isinstance(value, str):
        if value.startswith("IPY_MODEL_"):
            found.add(value[len("IPY_MODEL_"):])
    elif isinstance(value, dict):
        if isinstance(value.get("model_id"), str):
            found.add(value["model_id"])
        for item in value.values():
            found |= _references(item)
    elif isinstance(value, list):
        for item in value:
            found |= _references(item)
    return found


def _reachable(roots: set[str], state: dict) -> set[str]:
    """``roots`` and every model they refer to, transitively (ids missing from ``state`` left out)."""
    seen: set[str] = set()
    todo = [m for m in roots if m in state]
    while todo:
        model = todo.pop()
        if model not in seen:
            seen.add(model)
            todo.extend(m for m in _references(state[model].get("state", {})) if m in state and m not in seen)
    return seen


def _progress_bar_text(hbox: dict, state: dict) -> str | None:
    """The text line of a tqdm.notebook bar, or None if ``hbox`` is not one.

    tqdm.notebook draws a bar as an HBox of exactly three widgets: HTML (description and
    percentage), FloatProgress or IntProgress (the bar), HTML (count, times, postfix); that
    structure is the test, not the words. The texts hold the last redraw, which can trail the bar:
    a bar with ``leave=False`` closes without redrawing (300/300 steps, text "89% 266/300"), so the
    percentage and the count come from the progress widget's value and max.
    """
    children = [state.get(ref[len("IPY_MODEL_"):]) if isinstance(ref, str) and ref.startswith("IPY_MODEL_")
                else None for ref in hbox.get("state", {}).get("children", [])]
    if hbox.get("model_name") != "HBoxModel" or len(children) != 3 or None in children:
        return None
    names = [child.get("model_name") for child in children]
    if names[0] != "HTMLModel" or names[1] not in PROGRESS_MODELS or names[2] != "HTMLModel":
        return None
    left, bar, right = (child.get("state", {}) for child in children)
    left_text, right_text = (html.unescape(str(s.get("value", ""))).replace("\u2007", " ") for s in (left, right))
    low, high, value = (bar.get(key, 0) or 0 for key in ("min", "max", "value"))
    fraction = min(max((value - low) / (high - low), 0.0), 1.0) if high > low else 0.0
    percentage = re.fullmatch(r"(.*?)\s*\d+%", left_text, re.S)
    count = re.fullmatch(r"\s*\|?\s*\d+/\d+(.*)", right_text, re.S)
    if bar.get("bar_style") != "info" and percentage and count:  # "info": tqdm without a total
        left_text = f"{percentage[1]}{' ' if percentage[1] else ''}{100 * fraction:3.0f}%"
        right_text = f" {value:.0f}/{high:.0f}{count[1]}"
    drawn = "█" * int(BAR_WIDTH * fraction)
    return f"{left_text}|{drawn:<{BAR_WIDTH}}|{right_text}"


def _bars_to_text(outputs: list, bars: dict[str, str]) -> int:
    """Replace each widget view of a progress bar in ``outputs`` by its text; returns how many."""
    import nbformat

    replaced = 0
    for k, output in enumerate(outputs):
        view = output.get("data", {}).get(WIDGET_VIEW) if isinstance(output, dict) else None
        if isinstance(view, dict) and view.get("model_id") in bars:
            outputs[k] = nbformat.v4.new_output(output.get("output_type", "display_data"),
                                                data={"text/plain": bars[view["model_id"]]},
                                                metadata=output.get("metadata", {}))
            replaced += 1
    return replaced


def progress_bars_as_text(notebook: dict) -> int:
    """Turn the executed notebook's tqdm progress-bar widgets into text lines, in place.

    A progress bar (``tqdm.auto`` in ``training.train``) is a widget: its output is a widget view,
    and the notebook's metadata keeps the state of its HBox, progress, HTML, layout and style
    models, several KB per bar and useless once the kernel is gone. Each bar's view becomes one
    line of text (``"GradNorm, seed 0: 100%|██████████| 300/300 [00:01<00:00, 282.37it/s]"``),
    also inside Output widgets, and the state of every model only the bars used is dropped.
    Other widgets (sliders, dropdowns, the Output widgets they drive) keep their views and
    their state, which JupyterLab needs to draw them. Returns the number of bars turned into text.
    """
    widgets = notebook.get("metadata", {}).get("widgets", {})
    state = widgets.get(WIDGET_STATE, {}).get("state")
    if not state:
        return 0
    bars = {model: text for model, entry in state.items() if (text := _progress_bar_text(entry, state)) is not None}
    if not bars:
        return 0
    replaced = sum(_bars_to_text(cell.get("outputs", []), bars) for cell in notebook.get("cells", []))
    for entry in state.values():
        if entry.get("model_name") == "OutputModel":
            replaced += _bars_to_text(entry.get("state", {}).get("outputs", []), bars)
    used_by_bars = _reachable(set(bars), state)
    still_used = _reachable(set(state) - used_by_bars, state)  # a layout shared with a slider stays
    for model in used_by_bars - still_used:
        del state[model]
    if not state:
        del widgets[WIDGET_STATE]
        if not widgets:
            del notebook["metadata"]["widgets"]
    return replaced


def run_notebook(path: Path, output: Path, timeout: int | None = None, progress: bool = True,
                 partial: Path | None = None) -> float:
    """Execute ``path`` top to bottom in a fresh kernel (cwd: its folder) and write it to ``output``.

    ``timeout``: seconds one cell may run before it is interrupted (default
    ``default_cell_timeout()``). Progress bars are written as text (``progress_bars_as_text``); the
    run's mode goes into the notebook's metadata (``recorded_mode``). ``output`` is written only after
    every cell ran, atomically (it may be ``path`` itself). Returns the wall time in seconds.

    When a cell raises or times out or the kernel dies, what ran so far is saved to ``partial``
    (default: ``output``; pass another path to keep ``output`` untouched), every cell that did not run
    left empty, and ``ChapterFailed`` is raised; on Ctrl-C (SIGINT) the same, with ``ChapterInterrupted``.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from tqdm.auto import tqdm
    from traitlets.config import Config

    timeout = default_cell_timeout() if timeout is None else timeout
    if timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
    from mtl_tutorial.runtime import fast_mode

    mode = "fast" if fast_mode() else "full"
    partial = output if partial is None else partial
    notebook = nbformat.read(path, as_version=4)
    code_cells = [i for i, c in enumerate(notebook.cells) if c.cell_type == "code"]
    for index in code_cells:   # a cell that never runs must not show the outputs of an earlier run
        notebook.cells[index].outputs, notebook.cells[index].execution_count = [], None
    bar = tqdm(total=len(code_cells), desc=path.stem, unit="cell", disable=not progress, mininterval=0)
    running: dict[str, int] = {}

    def on_cell_execute(cell, cell_index):
        running["cell_index"] = cell_index
        bar.set_postfix_str(f"code cell {code_cells.index(cell_index) + 1} running")

    def on_cell_executed(cell, cell_index, execute_reply):
        if execute_reply["content"]["status"] == "ok":
            bar.update(1)

    client = NotebookClient(
        notebook,
        timeout=timeout,
        interrupt_on_timeout=True,
        error_on_timeout={"ename": _TIMED_OUT, "evalue": f"still running after {timeout} s", "traceback": []},
        iopub_timeout=IOPUB_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent.resolve())}},
        on_cell_execute=on_cell_execute,
        on_cell_executed=on_cell_executed,
        config=Config({"AsyncKernelManager": {"client_factory": PatientKernelClient}}),
    )
    interrupted = threading.Event()
    restore_sigint = None
    if threading.current_thread() is threading.main_thread():
        def on_sigint(signum, frame):
            interrupted.set()
            raise KeyboardInterrupt

        restore_sigint = signal.signal(signal.SIGINT, on_sigint)
    start = time.perf_counter()
    # The kernel process's own stderr (its log, not a cell's output, which comes through the notebook) goes to
    # a private file: a kernel shut down mid-reply by Ctrl-C logs a zmq traceback there, which is noise on ours.
    kernel_log = tempfile.TemporaryFile(mode="w+b")
    try:
        client.execute(stderr=kernel_log)
    except BaseException as err:  # a cell error, a dead or silent kernel (RuntimeError), or Ctrl-C
        # While the kernel runs, nbclient's own SIGINT/SIGTERM handler shuts the kernel down (so the run ends
        # in DeadKernelError or an AssertionError) and leaves this future behind: it, too, means interrupted.
        if getattr(client, "_async_cleanup_kernel_future", None) is not None:
            interrupted.set()
        if not (interrupted.is_set() or isinstance(err, (CellExecutionError, RuntimeError))):
            raise
        progress_bars_as_text(notebook)
        _write_atomically(notebook, partial)
        index = running.get("cell_index")
        number = None if index is None else code_cells.index(index) + 1
        if interrupted.is_set():
            raise ChapterInterrupted(path, number, partial) from None
        kernel_log.seek(0)
        kernel_stderr = kernel_log.read().decode(errors="replace")
        raise ChapterFailed(path, index, number, _describe(err, timeout, kernel_stderr), partial) from None
    finally:
        kernel_log.close()
        bar.close()
        if restore_sigint is not None:
            signal.signal(signal.SIGINT, restore_sigint)
        # nbclient leaves this registered when the kernel fails to start; at exit it would raise
        atexit.unregister(client._cleanup_kernel)
    progress_bars_as_text(notebook)
    notebook.metadata[RUN_METADATA] = {"mode": mode}
    _write_atomically(notebook, output)
    return time.perf_counter() - start
