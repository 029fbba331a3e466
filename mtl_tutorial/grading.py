"""Classroom assignments: student versions and autograding, with nbgrader's own machinery.

An assignment is an instructor notebook ``notebooks/assignments/NN_slug.ipynb`` (named like its
chapter) whose cells carry nbgrader v3 metadata: solution cells hold ``### BEGIN SOLUTION`` /
``### END SOLUTION`` regions, autograder cells hold visible tests and a
``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS`` region, and a markdown answer cell is graded
by hand. The tests compare the learner's functions with this package's reference implementations.

``student_version`` runs nbgrader's ``generate_assignment`` preprocessors that need no gradebook
(lock cells, clear solutions and outputs, checksums, clear hidden tests). ``grade`` scores one
submission the way ``nbgrader autograde`` does, without a course folder or database: it restores
every locked cell (tests with their hidden part) from the instructor source, runs the notebook in a
fresh kernel whose working folder holds nothing but that notebook, stops a cell at its time limit,
and scores each graded cell with nbgrader's rule (full points unless it raised or wrote to stderr).

Layout: finding assignments, building student versions, grading and its report, ``check_close``
(the helper the autograder cells call to explain a wrong value).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

DEFAULT_CELL_TIMEOUT_S = 30  # nbgrader's default: a graded cell here runs in well under a second
_TIMED_OUT = "CellTimeoutError"  # ename nbgrader's Execute gives a cell stopped at its time limit


class AssignmentError(ValueError):
    """A submission or an assignment name the grader cannot use; the message says what to do."""


# -- finding assignments ---------------------------------------------------------------------------


def assignments_folder(root: Path | None = None) -> Path:
    """``notebooks/assignments/`` of the course folder (``chapters.project_root()`` by default)."""
    from mtl_tutorial.chapters import project_root

    return (root or project_root()) / "notebooks" / "assignments"


def list_assignments(root: Path | None = None) -> list[Path]:
    """The instructor sources ``NN_slug.ipynb``, in chapter order."""
    from mtl_tutorial.chapters import CHAPTER_FILE

    folder = assignments_folder(root)
    return sorted(p for p in folder.glob("*.ipynb") if CHAPTER_FILE.match(p.name))


def resolve_assignments(names: Sequence[str], root: Path | None = None) -> list[Path]:
    """``["06", "08_lora"]`` -> instructor sources; no names means every assignment."""
    available = {p.name[:2]: p for p in list_assignments(root)}
    if not names:
        return [available[k] for k in sorted(available)]
    paths = []
    for name in names:
        stem = Path(name).stem
        number = stem.zfill(2) if stem.isdigit() else stem[:2]
        if number not in available or not available[number].stem.startswith(stem.zfill(2)):
            raise AssignmentError(
                f"unknown assignment {name!r}; assignments are: {', '.join(p.stem for p in available.values())} "
                "(give a number like 06 or a name like 06_gradient_alignment)"
            )
        paths.append(available[number])
    return paths


def _nbgrader(cell: Any) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def graded_cells(notebook: Any) -> list[Any]:
    """The cells that carry points (nbgrader ``grade: true``), in notebook order."""
    return [c for c in notebook.cells if _nbgrader(c).get("grade")]


def _read(path: Path) -> Any:
    import nbformat

    if not path.is_file():
        raise AssignmentError(f"{path} does not exist; give the path of a submitted .ipynb file")
    try:
        return nbformat.read(path, as_version=4)
    except Exception as err:  # nbformat raises NotJSONError, ValidationError, UnicodeDecodeError, ...
        raise AssignmentError(
            f"{path} is not a Jupyter notebook ({type(err).__name__}); give a submitted .ipynb file"
        ) from None


# -- student versions ------------------------------------------------------------------------------


def student_version(source: Path) -> Any:
    """The release version of an instructor notebook: what ``nbgrader generate_assignment`` hands out.

    Solution regions become ``# YOUR CODE HERE`` / ``raise NotImplementedError()``, answer cells
    ``YOUR ANSWER HERE``, hidden tests and outputs are removed, locked and graded cells get
    checksums (which ``nbgrader validate`` and ``grade`` use to tell an unanswered cell).
    """
    from nbgrader.preprocessors import (
        CheckCellMetadata,
        ClearHiddenTests,
        ClearMarkScheme,
        ClearOutput,
        ClearSolutions,
        ComputeChecksums,
        LockCells,
    )

    notebook, resources = _read(source), {}
    # generate_assignment's order without SaveCells (it needs the gradebook) and the header/footer
    for preprocessor in (LockCells, ClearSolutions, ClearOutput, CheckCellMetadata, ComputeChecksums,
                         ClearHiddenTests, ClearMarkScheme, ComputeChecksums, CheckCellMetadata):
        notebook, resources = preprocessor().preprocess(notebook, resources)
    return notebook


def build_student_versions(output: Path, names: Sequence[str] = (), root: Path | None = None) -> list[Path]:
    """Write the student version of each assignment (all by default) into ``output``; return the paths."""
    import nbformat

    sources = resolve_assignments(names, root)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sources:
        nbformat.write(student_version(source), output / source.name)
        written.append(output / source.name)
    return written


# -- grading ---------------------------------------------------------------------------------------


@dataclass
class CellScore:
    """One graded cell. ``score`` None: a written answer that waits for the teacher;
    ``message`` says why points were lost (empty when the cell scored full points)."""

    grade_id: str
    score: float | None
    max_score: float
    message: str = ""
    by_hand: bool = False  # a written answer (nbgrader solution + grade cell), outside the autograded total


@dataclass
class Report:
    """The scores of one submission, in the order of the instructor source's graded cells."""

    submission: Path
    assignment: str
    cells: list[CellScore] = field(default_factory=list)

    @property
    def score(self) -> float:
        """Autograded points scored."""
        return sum(c.score for c in self.cells if not c.by_hand)

    @property
    def max_score(self) -> float:
        """Autograded points available (written answers are graded by hand, on top)."""
        return sum(c.max_score for c in self.cells if not c.by_hand)


def _matching_source(notebook: Any, submission: Path, root: Path | None) -> Path:
    """The instructor source whose graded cells the submission carries (renamed files still match)."""
    ids = {_nbgrader(c).get("grade_id") for c in notebook.cells if _nbgrader(c).get("grade_id")}
    if not ids:
        raise AssignmentError(
            f"{submission} is not an assignment: none of its cells carries nbgrader metadata; hand out "
            "the student versions that `mtl-tutorial assign` builds and grade those"
        )
    sources = list_assignments(root)
    overlap = {source: len(ids & {_nbgrader(c).get("grade_id") for c in _read(source).cells}) for source in sources}
    best = max(overlap, key=overlap.get, default=None)
    if best is None or overlap[best] == 0:
        raise AssignmentError(
            f"{submission} is not one of this course's assignments (its graded cells {', '.join(sorted(ids))} "
            f"match none of: {', '.join(p.stem for p in sources)})"
        )
    return best


def _restore_from_source(notebook: Any, source: Path) -> Any:
    """The submission with every locked cell (tests, hidden part included) taken from the source.

    Answer cells keep the learner's text and get the student version's metadata (its checksum
    tells an unanswered cell); cells that claim an id the source does not have lose their nbgrader
    metadata. A graded cell the learner deleted stays missing (``grade`` scores it 0).
    """
    from nbgrader.preprocessors import ClearOutput, DeduplicateIds

    instructor = {_nbgrader(c)["grade_id"]: c for c in _read(source).cells if _nbgrader(c).get("grade_id")}
    released = {_nbgrader(c)["grade_id"]: c for c in student_version(source).cells if _nbgrader(c).get("grade_id")}
    notebook, _ = ClearOutput().preprocess(notebook, {})
    notebook, _ = DeduplicateIds().preprocess(notebook, {})
    for cell in notebook.cells:
        grade_id = _nbgrader(cell).get("grade_id")
        if grade_id not in instructor:
            cell.get("metadata", {}).pop("nbgrader", None)
            continue
        original = instructor[grade_id]
        cell.metadata = released[grade_id].metadata.copy()
        if not _nbgrader(original).get("solution"):
            cell.cell_type, cell.source = original.cell_type, original.source
            if cell.cell_type == "code":
                cell.setdefault("outputs", [])
                cell.setdefault("execution_count", None)
            else:
                cell.pop("outputs", None)
                cell.pop("execution_count", None)
    return notebook


def _execute(notebook: Any, name: str, timeout: int) -> str:
    """Run ``notebook`` in a fresh kernel inside an empty temporary folder (it alone, as ``name``).

    nbgrader's ``Execute`` keeps going after a failing cell and interrupts one at its time limit.
    Returns '' or, when the kernel died, what happened (the cells after it stay unexecuted).
    """
    import nbformat
    from nbgrader.preprocessors import Execute
    from traitlets.config import Config

    from mtl_tutorial.chapters import IOPUB_TIMEOUT_S, PatientKernelClient

    with tempfile.TemporaryDirectory(prefix="mtl-grade-") as folder:
        nbformat.write(notebook, Path(folder) / name)  # the working folder: the submission and nothing else
        executor = Execute(
            timeout=timeout,
            iopub_timeout=IOPUB_TIMEOUT_S,
            kernel_name="python3",
            extra_arguments=["--IPKernelApp.log_level=ERROR"],  # not the kernel's own start-up warnings
            config=Config({"AsyncKernelManager": {"client_factory": PatientKernelClient}}),
        )
        try:
            executor.preprocess(notebook, {"metadata": {"path": folder}})
        except RuntimeError as err:  # DeadKernelError, or a kernel that never started
            return (f"the kernel died in an earlier cell or never started ({type(err).__name__}: a crash, "
                    "os._exit, or running out of memory)")
    return ""


def _failure(cell: Any, timeout: int) -> str:
    """Why an executed autograder cell lost its points, in one line."""
    errors = [o for o in cell.get("outputs", []) if o.output_type == "error"]
    if any(o.ename == _TIMED_OUT for o in errors):
        return f"stopped after {timeout} s, the time limit per cell (an endless loop?)"
    if errors and errors[-1].ename == "NotImplementedError" and not errors[-1].evalue:
        return "NotImplementedError: not written yet (the code still says raise NotImplementedError())"
    if errors:
        last = errors[-1]
        return f"{last.ename}: {last.evalue}".strip().rstrip(":")
    stderr = "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stderr")
    if stderr:
        return f"wrote to stderr (nbgrader scores that 0): {stderr.strip().splitlines()[-1][:200]}"
    return "scored below full points (the cell's result was a partial grade)"


def grade(
    submission: Path, timeout: int = DEFAULT_CELL_TIMEOUT_S, root: Path | None = None
) -> tuple[Report, Any]:
    """Autograde one submitted notebook; return its ``Report`` and the executed notebook.

    The instructor source is found by the submission's graded-cell ids. A cell that raises, writes
    to stderr, runs past ``timeout`` seconds or never ran (a dead kernel) scores 0; an answer cell
    the learner left unchanged scores 0, a written one is left for the teacher (score None).
    Raises ``AssignmentError`` for a missing file, a file that is not a notebook or not an assignment.
    """
    from nbgrader.utils import determine_grade

    if timeout < 1:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
    submission = Path(submission)
    notebook = _read(submission)
    source = _matching_source(notebook, submission, root)
    notebook = _restore_from_source(notebook, source)
    crash = _execute(notebook, submission.name, timeout)
    report = Report(submission, source.stem)
    executed = {_nbgrader(c)["grade_id"]: c for c in graded_cells(notebook)}
    for original in graded_cells(_read(source)):
        grade_id, points = _nbgrader(original)["grade_id"], float(_nbgrader(original)["points"])
        by_hand = bool(_nbgrader(original).get("solution"))
        cell = executed.get(grade_id)
        if cell is None:
            message = "this graded cell was deleted from the submission"
            report.cells.append(CellScore(grade_id, 0.0, points, message, by_hand))
        elif by_hand:
            score, _ = determine_grade(cell)  # 0 when unchanged from the student version, else None
            message = "not answered" if score == 0 else "written answer: graded by hand"
            report.cells.append(CellScore(grade_id, score, points, message, by_hand))
        elif cell.get("execution_count") is None:
            message = f"did not run: {crash or 'an earlier cell stopped the kernel'}"
            report.cells.append(CellScore(grade_id, 0.0, points, message))
        else:
            score, _ = determine_grade(cell)
            message = _failure(cell, timeout) if score < points else ""
            report.cells.append(CellScore(grade_id, float(score), points, message))
    return report, notebook


def _points(value: float) -> str:
    return f"{value:g}"


def format_report(report: Report) -> str:
    """The score table: one line per graded cell, failures with their message, then ``total  S / M``."""
    width = max([len(c.grade_id) for c in report.cells] + [4])
    lines = [f"{report.submission}  (assignment {report.assignment})"]  # the path: students' files share names
    for c in report.cells:
        score = "?" if c.score is None else _points(c.score)
        lines.append(f"  {c.grade_id:<{width}}  {score:>3} / {_points(c.max_score):<3}  {c.message or 'ok'}")
    by_hand = sum(c.max_score for c in report.cells if c.by_hand)
    if by_hand:
        lines.append(
            f"  (the total leaves out the {_points(by_hand)} points of written answers: a teacher grades those)"
        )
    lines.append(f"total  {_points(report.score)} / {_points(report.max_score)}")
    return "\n".join(lines)


# -- the helper autograder cells call ----------------------------------------------------------------


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
