"""Grading: the score of each part is decided in the grader's process, from probes run in a sandbox.

``grade_batch`` reads and hashes every instructor source before any learner code runs, draws one
seed for the batch, runs each instructor source once through its probes (the references), then
each submission in its own sandbox (``sandbox.run_sandboxed``): the notebook with its locked cells
restored, then the probes. A part scores its points when the learner's probe result matches the
reference (``probes.judge``); the visible test cells run too, for the learner's feedback only. A
written answer waits for the teacher. One submission can never stop another from being graded:
whatever happens becomes that submission's reason, and the batch ends with a report for every file.

Flags for the teacher (they change no score): answer cells identical to the instructor solutions,
answer cells that reach for the references (``mtl_tutorial``, ``importlib``, ``__import__``, ...).
"""

from __future__ import annotations

import csv
import hashlib
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from mtl_tutorial.grading.assignments import (
    DEFAULT_CELL_TIMEOUT_S,
    AssignmentError,
    _nbgrader,
    _read,
    graded_cells,
    list_assignments,
    matching_source,
    restore_from_source,
    student_version,
)
from mtl_tutorial.grading.parts import PROBES
from mtl_tutorial.grading.probes import judge, read_result, result_file
from mtl_tutorial.grading.runner import EXECUTED_FILE
from mtl_tutorial.grading.sandbox import Limits, run_sandboxed

_TIMED_OUT = "CellTimeoutError"  # ename nbgrader's Execute gives a cell stopped at its time limit
# words in an answer cell that reach past the learner's own code (flagged, never scored)
SUSPICIOUS = ("mtl_tutorial", "importlib", "__import__", "sys.modules", "builtins", "get_ipython", "exec(",
              "eval(", "compile(", "ctypes", "sys.settrace", "sys.setprofile", "gc.get_", "inspect.")


@dataclass
class CellScore:
    """One graded cell. ``score`` None: a written answer that waits for the teacher;
    ``message`` says why points were lost (empty when the cell scored full points)."""

    grade_id: str
    score: float | None
    max_score: float
    message: str = ""
    by_hand: bool = False  # a written answer (nbgrader solution + grade cell), outside the autograded total
    answer: str = ""  # a written answer's text, for the teacher


@dataclass
class Report:
    """The scores of one submission, in the order of the instructor source's graded cells.

    refused: why the file was not graded (empty when it was); flags: what the teacher should look at.
    """

    submission: Path
    assignment: str
    cells: list[CellScore] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    refused: str = ""

    @property
    def score(self) -> float:
        """Autograded points scored."""
        return sum(c.score or 0.0 for c in self.cells if not c.by_hand)

    @property
    def max_score(self) -> float:
        """Autograded points available (written answers are graded by hand, on top)."""
        return sum(c.max_score for c in self.cells if not c.by_hand)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _answer_cells(notebook: Any) -> list[Any]:
    return [c for c in notebook.cells if _nbgrader(c).get("solution") and c.cell_type == "code"]


def _flags(submission: Any, source: Any, released: Any) -> list[str]:
    """What the teacher should look at in the answer cells (they change no score): the instructor's
    solutions handed in, and, in the answer cells of autograded parts (``<part>_code``), words that reach
    past the learner's own code which the handed-out template of that cell did not already hold. An
    experiment's code cell may use the package (its text is graded by hand), so it is not searched."""
    def normal(text: str) -> str:
        return re.sub(r"\s+", " ", text).strip()

    flags = []
    theirs = {_nbgrader(c)["grade_id"]: normal(c.source) for c in _answer_cells(source)}
    template = {_nbgrader(c)["grade_id"]: c.source for c in _answer_cells(released)}
    mine = {_nbgrader(c).get("grade_id"): c.source for c in _answer_cells(submission)}
    if theirs and all(normal(mine.get(k, "")) == v for k, v in theirs.items()):
        flags.append("the answer cells are the instructor source's solutions, word for word")
    for grade_id, text in mine.items():
        if (grade_id or "").removesuffix("_code") not in PROBES:
            continue
        found = [word for word in SUSPICIOUS if word in text and word not in template.get(grade_id, "")]
        if found:
            flags.append(f"answer cell {grade_id} uses {', '.join(found)}: does it call the references "
                         "or reach into the grader's checks?")
    return flags


def _visible_failure(cell: Any, timeout: int) -> str:
    """Why a visible test cell failed in the learner's run, in one line ('' if it passed)."""
    errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    if any(o.get("ename") == _TIMED_OUT for o in errors):
        return f"stopped after {timeout} s, the time limit per cell (an endless loop?)"
    if errors and errors[-1].get("ename") == "NotImplementedError" and not errors[-1].get("evalue"):
        return "NotImplementedError: not written yet (the code still says raise NotImplementedError())"
    if errors:
        return f"{errors[-1].get('ename')}: {errors[-1].get('evalue')}".strip().rstrip(":")[:400]
    return ""


def _stderr_note(cell: Any) -> str:
    text = "".join(str(o.get("text", "")) for o in cell.get("outputs", [])
                   if o.get("output_type") == "stream" and o.get("name") == "stderr")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    warnings = [m.group(0) for line in lines for m in [re.search(r"\w*Warning: .*", line)] if m]
    shown = warnings[0] if warnings else lines[-1] if lines else ""  # "UserWarning: ...", not the kernel's file path
    return f"ok (it wrote to stderr, which costs nothing: {shown[:120]})" if lines else ""


def _executed_cells(out: Path, limits: Limits) -> dict[str, Any]:
    """grade_id -> executed cell, from the sandbox's copy (untrusted: size-checked, parse errors ignored)."""
    import nbformat

    path = out / EXECUTED_FILE
    if not path.is_file() or path.stat().st_size > limits.notebook_bytes + 2 * limits.file_bytes:
        return {}
    try:
        notebook = nbformat.read(path, as_version=4)
    except Exception:
        return {}
    return {_nbgrader(c).get("grade_id"): c for c in notebook.cells if _nbgrader(c).get("grade_id")}


def references(source: Path, seed: int, limits: Limits, unsafe: bool = False) -> dict[str, Any]:
    """grade_id -> the instructor source's probe record at ``seed`` (its own run, in a sandbox too)."""
    grade_ids = [_nbgrader(c)["grade_id"] for c in graded_cells(_read(source)) if not _nbgrader(c).get("solution")]
    run = run_sandboxed(source, grade_ids, seed, limits, unsafe)
    try:
        records = {g: read_result(run.out / result_file(g)) for g in grade_ids}
    finally:
        shutil.rmtree(run.out.parent, ignore_errors=True)
    failed = [g for g, record in records.items() if record is None or "result" not in record]
    if failed:
        raise AssignmentError(f"the instructor source {source.name} failed the grader's own probes {', '.join(failed)} "
                              f"({run.ended}); fix the source or parts.PROBES before grading")
    return records


def _refuse_renamed(submission: Path, source: Path) -> None:
    number = re.match(r"(\d\d)[_\-. ]", submission.name)
    if number and number.group(1) != source.name[:2]:
        raise AssignmentError(
            f"{submission} is named like assignment {number.group(1)} but its graded cells are those of "
            f"{source.stem}; rename it or hand in the right notebook"
        )


def grade(
    submission: Path,
    timeout: int = DEFAULT_CELL_TIMEOUT_S,
    root: Path | None = None,
    limits: Limits | None = None,
    seed: int | None = None,
    reference: dict[str, Any] | None = None,
    unsafe: bool = False,
) -> Report:
    """Grade one submission in a sandbox; raises ``AssignmentError`` for a file that cannot be graded.

    reference: the instructor source's probe records at ``seed`` (``references``); computed here when
    None. ``grade_batch`` shares them across a batch.
    """
    limits = limits or Limits(cell_timeout_s=timeout)
    submission = Path(submission)
    if not submission.is_file():
        raise AssignmentError(f"{submission} does not exist; give the path of a submitted .ipynb file")
    if submission.stat().st_size > limits.notebook_bytes:
        raise AssignmentError(f"{submission} is {submission.stat().st_size / 2**20:.0f} MiB, more than the "
                              f"{limits.notebook_bytes / 2**20:.0f} MiB a submission may be: clear its outputs")
    notebook = _read(submission)
    source = matching_source(notebook, submission, root)
    _refuse_renamed(submission, source)
    instructor = _read(source)
    seed = secrets.randbelow(2**31) if seed is None else seed
    reference = references(source, seed, limits, unsafe) if reference is None else reference
    released = student_version(source)
    restored = restore_from_source(notebook, source, released)
    report = Report(submission, source.stem, flags=_flags(restored, instructor, released))
    import nbformat

    with tempfile.TemporaryDirectory(prefix="mtl-restored-") as folder:  # the restored notebook, private
        nbformat.write(restored, Path(folder) / "submission.ipynb")
        autograded = [_nbgrader(c)["grade_id"] for c in graded_cells(instructor) if not _nbgrader(c).get("solution")]
        run = run_sandboxed(Path(folder) / "submission.ipynb", autograded, seed, limits, unsafe)
    try:
        executed = _executed_cells(run.out, limits)
        mine = {g: read_result(run.out / result_file(g)) for g in autograded}
    finally:
        shutil.rmtree(run.out.parent, ignore_errors=True)
    present = {_nbgrader(c)["grade_id"]: c for c in graded_cells(restored)}
    for original in graded_cells(instructor):
        grade_id, points = _nbgrader(original)["grade_id"], float(_nbgrader(original)["points"])
        by_hand = bool(_nbgrader(original).get("solution"))
        if grade_id not in present:
            report.cells.append(CellScore(grade_id, 0.0, points, "this graded cell was deleted from the submission",
                                          by_hand))
        elif by_hand:
            from nbgrader.utils import determine_grade

            score, _ = determine_grade(present[grade_id])  # 0 when unchanged from the student version, else None
            message = "not answered" if score == 0 else "written answer: graded by hand"
            report.cells.append(CellScore(grade_id, score, points, message, True, present[grade_id].source))
        else:
            report.cells.append(_autograded(grade_id, points, reference, mine, executed, run.ended, limits))
    return report


def _autograded(grade_id: str, points: float, reference: dict, mine: dict, executed: dict, ended: str,
                limits: Limits) -> CellScore:
    """Full points when the probe matches the reference and the part's own test cell raised nothing.

    The test cell ran in the learner's kernel, so it can only take points away (a learner gains
    nothing by breaking it); the probe, judged here, is what gives them.
    """
    cell = executed.get(grade_id, {})
    visible = _visible_failure(cell, limits.cell_timeout_s) if cell else ""
    if mine.get(grade_id) is None:  # the probes, run last, never ran: the part's own test may say why it failed
        why = ended if ended != "normally" else "something in the notebook kept later cells from running as written"
        return CellScore(grade_id, 0.0, points, visible or f"did not run: {why}")
    verdict = judge(reference.get(grade_id), mine[grade_id], PROBES[grade_id])
    answer = executed.get(grade_id + "_code", {})
    stopped = _visible_failure(answer, limits.cell_timeout_s) if answer else ""
    if verdict or visible:
        if stopped and not stopped.startswith("NotImplementedError"):  # the test's NameError would hide why
            return CellScore(grade_id, 0.0, points, f"your answer cell {grade_id}_code did not finish ({stopped}), "
                                                    "so what it should define could not be tested")
        return CellScore(grade_id, 0.0, points, visible or verdict)
    return CellScore(grade_id, points, points, _stderr_note(cell) if cell else "")


def grade_batch(
    submissions: Sequence[Path],
    limits: Limits | None = None,
    root: Path | None = None,
    unsafe: bool = False,
    seed: int | None = None,
    on_report: Callable[[Report], None] | None = None,
    workers: int = 1,
) -> list[Report]:
    """Grade every submission; one report each, in order, whatever any of them does.

    The instructor sources are hashed before any learner code runs and checked after the batch
    (a change raises: the batch's scores would not be trustworthy). Each assignment's references
    are computed once, at one seed drawn for the batch. A file that cannot be graded gets a report
    with ``refused`` set. ``workers`` sandboxes run side by side; ``on_report`` sees each report in
    order as soon as it and those before it are done (progress).
    """
    from concurrent.futures import ThreadPoolExecutor

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    limits = limits or Limits()
    digests = {source: _digest(source) for source in list_assignments(root)}
    seed = secrets.randbelow(2**31) if seed is None else seed
    submissions = [Path(p) for p in submissions]

    def source_of(submission: Path) -> Path | None:
        try:
            if submission.is_file() and submission.stat().st_size <= limits.notebook_bytes:
                source = matching_source(_read(submission), submission, root)
                _refuse_renamed(submission, source)
                return source
        except AssignmentError:
            pass
        return None  # grade() says why

    def reference_of(source: Path) -> dict[str, Any] | AssignmentError:
        try:
            return references(source, seed, limits, unsafe)
        except AssignmentError as err:
            return err

    def one(job: tuple[Path, Path | None]) -> Report:
        submission, source = job
        try:
            reference = cache.get(source)
            if isinstance(reference, AssignmentError):
                raise reference
            return grade(submission, limits=limits, root=root, seed=seed, reference=reference, unsafe=unsafe)
        except AssignmentError as err:
            return Report(submission, source.stem if source else "", refused=str(err))
        except Exception as err:  # never let one file stop the batch
            return Report(submission, "", refused=f"the grader failed on this file ({type(err).__name__}: {err})")

    jobs = [(submission, source_of(submission)) for submission in submissions]
    needed = sorted({source for _, source in jobs if source is not None})
    with ThreadPoolExecutor(max_workers=workers) as pool:
        cache = dict(zip(needed, pool.map(reference_of, needed)))
        reports = []
        for report in pool.map(one, jobs):
            reports.append(report)
            if on_report:
                on_report(report)
    changed = [source.name for source, digest in digests.items() if _digest(source) != digest]
    if changed:
        raise RuntimeError(f"the instructor sources {', '.join(changed)} changed during grading: the scores of this "
                           "batch cannot be trusted; restore them (git checkout) and grade again")
    return reports


# -- what a teacher takes home ------------------------------------------------------------------------


def _points(value: float) -> str:
    return f"{value:g}"


def format_report(report: Report) -> str:
    """The score table: one line per graded cell, failures with their message, flags, then ``total  S / M``."""
    lines = [f"{report.submission}  (assignment {report.assignment or '?'})"]  # the path: students' files share names
    if report.refused:
        return "\n".join(lines + [f"  not graded: {report.refused}", "total  0 / ?"])
    width = max([len(c.grade_id) for c in report.cells] + [4])
    for c in report.cells:
        score = "?" if c.score is None else _points(c.score)
        lines.append(f"  {c.grade_id:<{width}}  {score:>3} / {_points(c.max_score):<3}  {c.message or 'ok'}")
    by_hand = sum(c.max_score for c in report.cells if c.by_hand)
    if by_hand:
        lines.append(f"  (the total leaves out the {_points(by_hand)} points of written answers: a teacher grades those)")
    lines += [f"  flag: {flag}" for flag in report.flags]
    lines.append(f"total  {_points(report.score)} / {_points(report.max_score)}")
    return "\n".join(lines)


def write_csv(reports: Sequence[Report], path: Path) -> None:
    """One row per submission and part (a refused file: one row with its reason)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["submission", "assignment", "part", "score", "max_score", "graded_by", "message", "flags"])
        for r in reports:
            flags = " | ".join(r.flags)
            if r.refused:
                writer.writerow([str(r.submission), r.assignment, "", 0, "", "", f"not graded: {r.refused}", flags])
            for c in r.cells:
                writer.writerow([str(r.submission), r.assignment, c.grade_id, "" if c.score is None else _points(c.score),
                                 _points(c.max_score), "teacher" if c.by_hand else "grader", c.message, flags])


def write_feedback(reports: Sequence[Report], folder: Path) -> list[Path]:
    """One markdown file per submission (its parts, points and messages) and ``written_answers.md``
    (every written answer of the batch, by part, for hand-grading); returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written, answers = [], {}
    for k, r in enumerate(reports):
        lines = [f"# Feedback: {r.submission.name}", "", f"Assignment: {r.assignment or 'not recognised'}", ""]
        if r.refused:
            lines += [f"Not graded: {r.refused}", ""]
        else:
            lines += ["| part | points | message |", "|---|---|---|"]
            for c in r.cells:
                score = "graded by your teacher" if c.score is None else f"{_points(c.score)} / {_points(c.max_score)}"
                lines.append(f"| {c.grade_id} | {score} | {(c.message or 'ok').replace('|', '/')} |")
                if c.by_hand and c.score is None:
                    answers.setdefault((r.assignment, c.grade_id), []).append((r.submission, c.answer))
            lines += ["", f"Autograded total: {_points(r.score)} / {_points(r.max_score)}", ""]
        path = folder / f"{k + 1:03d}_{r.submission.stem}.feedback.md"
        path.write_text("\n".join(lines))
        written.append(path)
    lines = ["# Written answers, by part", ""]
    for (assignment, grade_id), entries in sorted(answers.items()):
        lines += [f"## {assignment} · {grade_id}", ""]
        for submission, text in entries:
            lines += [f"### {submission}", "", text.strip(), ""]
    path = folder / "written_answers.md"
    path.write_text("\n".join(lines))
    return written + [path]
