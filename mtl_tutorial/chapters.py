"""The course's chapters: where they are, what README.md says about them, and running them headless.

A chapter is a notebook ``notebooks/NN_slug.ipynb``. Its title and measured runtimes live in one
place, the chapter table of README.md, which ``mtl-tutorial list`` reads.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

CHAPTER_FILE = re.compile(r"^(\d\d)_[a-z0-9_]+\.ipynb$")
TABLE_ROW = re.compile(r"^\|\s*(\d\d)\s*\|(.*)\|\s*$")


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


def list_chapters(root: Path | None = None) -> list[Chapter]:
    """Every chapter in README.md's table, with ``path`` set where the notebook exists."""
    root = root or project_root()
    chapters = read_chapter_table(root / "README.md")
    files = {p.name[:2]: p for p in sorted((root / "notebooks").glob("*.ipynb"))}
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
    """A cell of a chapter raised; carries where, so the command can say it."""

    def __init__(self, notebook: Path, cell_index: int, code_cell_number: int, error: str, saved: Path):
        self.notebook, self.cell_index, self.code_cell_number = notebook, cell_index, code_cell_number
        self.error, self.saved = error, saved
        super().__init__(
            f"{notebook.name} failed in cell {cell_index} (code cell {code_cell_number}): {error}\n"
            f"the partly executed notebook is saved at {saved}"
        )


def run_notebook(path: Path, output: Path, timeout: int = 1800, progress: bool = True) -> float:
    """Execute ``path`` top to bottom in a fresh kernel (cwd: its folder) and write it to ``output``.

    Returns the wall time in seconds. Raises ``ChapterFailed`` on the first failing cell, after
    saving what ran so far to ``output``.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from tqdm.auto import tqdm

    notebook = nbformat.read(path, as_version=4)
    code_cells = [i for i, c in enumerate(notebook.cells) if c.cell_type == "code"]
    bar = tqdm(total=len(code_cells), desc=path.stem, unit="cell", disable=not progress)
    failed: dict[str, int] = {}

    def on_cell_executed(cell, cell_index, execute_reply):
        bar.update(1)

    def on_cell_error(cell, cell_index, execute_reply):
        failed["cell_index"] = cell_index

    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent.resolve())}},
        on_cell_executed=on_cell_executed,
        on_cell_error=on_cell_error,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as err:
        nbformat.write(notebook, output)
        index = failed.get("cell_index", -1)
        error = f"{err.ename}: {err.evalue}" if getattr(err, "ename", None) else str(err).strip()
        raise ChapterFailed(path, index, code_cells.index(index) + 1 if index in code_cells else -1,
                            error, output) from None
    finally:
        bar.close()
    nbformat.write(notebook, output)
    return time.perf_counter() - start
