"""Assignments: finding the instructor sources, student versions, restoring a submission's locked cells.

An assignment is an instructor notebook ``notebooks/assignments/NN_slug.ipynb`` (named like its
chapter) whose cells carry nbgrader v3 metadata: solution cells hold ``### BEGIN SOLUTION`` /
``### END SOLUTION`` regions, autograder cells hold visible tests and a
``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS`` region, and a markdown answer cell is graded
by hand. The tests compare the learner's functions with this package's reference implementations.

``student_version`` runs nbgrader's ``generate_assignment`` preprocessors that need no gradebook
(lock cells, clear solutions and outputs, checksums, clear hidden tests); ``restore_from_source``
takes every locked cell of a submission (tests with their hidden part) back from the instructor
source, which ``matching_source`` finds by the submission's graded-cell ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

DEFAULT_CELL_TIMEOUT_S = 30  # nbgrader's default: a graded cell here runs in well under a second
_TIMED_OUT = "CellTimeoutError"  # ename nbgrader's Execute gives a cell stopped at its time limit


class AssignmentError(ValueError):
    """A submission or an assignment name the grader cannot use; the message says what to do."""


# -- finding assignments ---------------------------------------------------------------------------


def assignments_folder(root: Path | None = None, language: str = "en") -> Path:
    """``notebooks/assignments/`` of the course folder (``chapters.project_root()`` by default);
    ``language="zh"``: the Chinese edition's, ``notebooks/zh/assignments/`` (same cell ids)."""
    from mtl_tutorial.chapters import project_root

    if language not in ("en", "zh"):
        raise AssignmentError(f"language must be 'en' or 'zh', got {language!r}")
    notebooks = (root or project_root()) / "notebooks"
    return notebooks / "assignments" if language == "en" else notebooks / "zh" / "assignments"


def list_assignments(root: Path | None = None, language: str = "en") -> list[Path]:
    """The instructor sources ``NN_slug.ipynb``, in chapter order."""
    from mtl_tutorial.chapters import CHAPTER_FILE

    folder = assignments_folder(root, language)
    return sorted(p for p in folder.glob("*.ipynb") if CHAPTER_FILE.match(p.name))


def resolve_assignments(names: Sequence[str], root: Path | None = None, language: str = "en") -> list[Path]:
    """``["06", "08_lora"]`` -> instructor sources; no names means every assignment."""
    available = {p.name[:2]: p for p in list_assignments(root, language)}
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


def build_student_versions(output: Path, names: Sequence[str] = (), root: Path | None = None,
                           language: str = "en") -> list[Path]:
    """Write the student version of each assignment (all by default, in ``language``) into ``output``;
    return the paths."""
    import nbformat

    sources = resolve_assignments(names, root, language)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sources:
        nbformat.write(student_version(source), output / source.name)
        written.append(output / source.name)
    return written


# -- restoring a submission -------------------------------------------------------------------------


def matching_source(notebook: Any, submission: Path, root: Path | None) -> Path:
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


def restore_from_source(notebook: Any, source: Path, released: Any = None) -> Any:
    """The submission with every locked cell (tests, hidden part included) taken from the source.

    Answer cells keep the learner's text and get the student version's metadata (its checksum
    tells an unanswered cell); cells that claim an id the source does not have lose their nbgrader
    metadata. A graded cell the learner deleted stays missing (``grade`` scores it 0).
    """
    from nbgrader.preprocessors import ClearOutput, DeduplicateIds

    instructor = {_nbgrader(c)["grade_id"]: c for c in _read(source).cells if _nbgrader(c).get("grade_id")}
    released = released if released is not None else student_version(source)  # the caller may have built it
    released = {_nbgrader(c)["grade_id"]: c for c in released.cells if _nbgrader(c).get("grade_id")}
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
