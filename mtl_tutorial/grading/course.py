"""An nbgrader course folder for the assignments: ``mtl-tutorial course init DIR``.

Lays out what ``nbgrader generate_assignment`` expects (``source/NN_slug/NN_slug.ipynb``), an
``nbgrader_config.py`` naming the course and its exchange (a folder every student can write to, for
a class on one machine or a shared file system), and ``student_nbgrader_config.py`` for the learners'
working folder. ``COMMANDS`` lists the path a term takes, teacher and student side.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

from mtl_tutorial.grading.assignments import AssignmentError, resolve_assignments

COMMANDS = """\
teacher, in {folder}:
  nbgrader generate_assignment NN_slug       # release/NN_slug/: the student version, and gradebook.db
  nbgrader release_assignment NN_slug        # into the exchange
students, in a folder holding student_nbgrader_config.py renamed nbgrader_config.py:
  nbgrader fetch_assignment NN_slug          # NN_slug/NN_slug.ipynb to work on
  nbgrader submit NN_slug                    # back into the exchange
teacher:
  nbgrader collect NN_slug                   # submitted/<student>/NN_slug/
  nbgrader autograde NN_slug                 # autograded/; grade written answers with `nbgrader formgrader`
  nbgrader export                            # grades.csv
For marks that count, also run `mtl-tutorial grade submitted/*/NN_slug/*.ipynb` (a sandbox, points decided
outside the learners' kernels): nbgrader's autograde runs the learners' code with your rights."""


def _config(course_id: str, exchange: Path) -> str:
    return (f"c = get_config()\n"
            f"c.CourseDirectory.course_id = {course_id!r}\n"
            f"c.Exchange.root = {str(exchange)!r}\n"
            f"c.Execute.timeout = 30  # seconds per cell, as mtl-tutorial grade\n")


def init_course(folder: Path, course_id: str = "mtl-tutorial", exchange: Path | None = None,
                names: Sequence[str] = (), root: Path | None = None) -> list[Path]:
    """Write the course folder (all assignments by default); return the files written.

    Refuses a folder that already holds an ``nbgrader_config.py`` (nothing of a running course is
    overwritten) and a course id nbgrader would reject.
    """
    if not course_id or not all(ch.isalnum() or ch in "-_" for ch in course_id):
        raise AssignmentError(f"course id {course_id!r}: use letters, digits, '-' and '_' (nbgrader's rule)")
    folder = Path(folder)
    if (folder / "nbgrader_config.py").exists():
        raise AssignmentError(f"{folder} already holds an nbgrader_config.py: choose a new folder, or copy the "
                              "sources you need into its source/ yourself")
    sources = resolve_assignments(names, root)
    exchange = Path(exchange) if exchange is not None else folder / "exchange"
    written = []
    for source in sources:
        target = folder / "source" / source.stem / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        written.append(target)
    exchange.mkdir(parents=True, exist_ok=True)
    exchange.chmod(0o777)  # nbgrader's exchange: every student writes their submission into it
    for name in ("nbgrader_config.py", "student_nbgrader_config.py"):
        (folder / name).write_text(_config(course_id, exchange.resolve()))
        written.append(folder / name)
    return written
