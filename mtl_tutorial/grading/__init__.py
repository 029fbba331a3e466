"""Classroom assignments: student versions, and grading a teacher can trust.

- ``assignments``: finding the instructor sources ``notebooks/assignments/NN_slug.ipynb`` (nbgrader v3
  metadata), building student versions with nbgrader's preprocessors, restoring locked cells.
- ``probes``: the grader's own questions to a learner's functions (inputs drawn per batch), answered
  in the sandbox and judged in the grader's process.
- ``sandbox`` / ``runner``: each submission runs in its own bubblewrap sandbox (no network, no other
  processes, read-only environment, no instructor sources), under limits of time, memory and output.
- ``grade``: scoring one submission or a batch, the score table, CSV and feedback files.
- ``hints``: ``check_close``, the helper the visible test cells call to explain a wrong value.
"""

from mtl_tutorial.grading.assignments import (
    DEFAULT_CELL_TIMEOUT_S,
    AssignmentError,
    assignments_folder,
    build_student_versions,
    graded_cells,
    list_assignments,
    resolve_assignments,
    student_version,
)
from mtl_tutorial.grading.grade import (
    CellScore,
    Report,
    format_report,
    grade,
    grade_batch,
    references,
    write_csv,
    write_feedback,
)
from mtl_tutorial.grading.hints import check_close
from mtl_tutorial.grading.sandbox import Limits, SandboxUnavailable, bubblewrap_problem

__all__ = ["DEFAULT_CELL_TIMEOUT_S", "AssignmentError", "CellScore", "Limits", "Report", "SandboxUnavailable",
           "assignments_folder", "bubblewrap_problem", "build_student_versions", "check_close", "format_report",
           "grade", "grade_batch", "graded_cells", "list_assignments", "references", "resolve_assignments",
           "student_version", "write_csv", "write_feedback"]
