"""Assignments: student versions, grading in a sandbox, the mistakes the tests must name, the cheats it must defeat.

Each graded notebook runs in a fresh sandboxed kernel (seconds), so the expensive work happens once per
session and side by side: ``commands`` starts, in the background, ``mtl-tutorial grade`` on one batch
mixing the mistake fixtures, a crash and the cheats of ``grading_cheats`` (with --csv and --feedback),
a grader whose own memory is measured on the 100 MB-output cheat, and ``nbgrader validate`` on the
sources; ``graded`` grades the instructor and student versions in-process, two at a time.
"""

import csv
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

import mtl_tutorial
from grading_cheats import CALLS_THE_REFERENCE, CHEATS, HONEST_WITH_WARNING, write_huge_notebook, write_submission
from mtl_tutorial import cli
from mtl_tutorial.grading import (
    Limits,
    bubblewrap_problem,
    build_student_versions,
    grade_batch,
    graded_cells,
    list_assignments,
)

ROOT = Path(__file__).resolve().parents[1]
SOURCES = list_assignments(ROOT)
SUBMISSIONS = Path(__file__).resolve().parent / "fixtures" / "submissions"
NAMES = [p.stem for p in SOURCES]
LOOP_TIMEOUT_S = 10  # long enough for `import torch` on a loaded machine, short enough for CI
CHEAT_TIME_LIMIT_S = 120  # a whole submission: the cheat that ignores interrupts runs into it
if not bubblewrap_problem():
    UNSAFE = []
elif __import__("os").environ.get("CI"):
    raise RuntimeError(f"CI grades in a sandbox, but {bubblewrap_problem()}")
else:
    UNSAFE = ["--unsafe-no-sandbox"]  # a developer's machine without bubblewrap: the sandbox tests skip

# fixture submission -> (its assignment, the part it gets wrong, words the failure message must contain)
MISTAKES = {
    "01_averaged_optima.ipynb": ("01_multitask_objective", "a01_optimum", "not simply λa_1 + (1-λ)a_2"),
    "02_first_rows_as_targets.ipynb": ("02_hard_parameter_sharing", "a02_loss", "targets[positions], not the first rows"),
    "05_target_not_detached.ipynb": ("05_dynamic_task_weighting", "a05_gradnorm", "Ḡ included, are constants"),
    "06_projected_twice.ipynb": ("06_gradient_alignment", "a06_pcgrad", "off the *original* other gradient"),
    "07_no_residual.ipynb": ("07_adapter_tuning", "a07_forward", "keep the residual h"),
    "08_scaled_by_alpha.ipynb": ("08_lora", "a08_forward", "scale the update by α/r"),
    "09_scaled_by_hidden_size.ipynb": ("09_prefix_tuning", "a09_attention", "d the HEAD size"),
    "03_every_pair_twice.ipynb": ("03_soft_sharing_and_task_relations", "a03_penalty", "each unordered pair s < t once"),
    "04_always_before_minus_after.ipynb": ("04_training_schedules", "a04_forgetting", "after − before when lower is better"),
    "10_mean_over_all_tasks.ipynb": ("10_peft_showdown_and_deployment", "a10_disjoint", "divide each entry by the number of tasks that agree"),
    "11_negated_without_scale.ipynb": ("11_adversarial_and_meta_learning", "a11_reversal", "multiply by −λ, not just negate"),
}
OTHER_FIXTURES = {"06_endless_loop.ipynb"}  # graded by the endless-loop test


def _nbgrader(cell):
    return cell.metadata.get("nbgrader", {})


@pytest.fixture(scope="session")
def student_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("student")
    assert cli.main(["assign", "--output", str(folder)]) == 0
    return folder


def _package_and_sources_digest() -> str:
    """One hash over every file of the package and every instructor source."""
    files = sorted(Path(mtl_tutorial.__file__).parent.rglob("*.py")) + SOURCES
    return hashlib.sha256(b"".join(path.read_bytes() for path in files)).hexdigest()


@pytest.fixture(scope="session")
def cheat_dir(tmp_path_factory, student_dir):
    """The cheats (``grading_cheats``), a right answer that warns, one that calls the reference, the
    public instructor source handed in, a 200 MB notebook and an 08 submission renamed 06."""
    folder = tmp_path_factory.mktemp("cheats")
    released = student_dir / "06_gradient_alignment.ipynb"
    for name, answer in CHEATS.items():
        write_submission(released, answer, folder / f"06_{name}.ipynb")
    write_submission(released, HONEST_WITH_WARNING, folder / "06_honest_with_warning.ipynb")
    write_submission(released, CALLS_THE_REFERENCE, folder / "06_calls_the_reference.ipynb")
    (folder / "06_instructor_source.ipynb").write_bytes((ROOT / "notebooks" / "assignments" / released.name).read_bytes())
    write_huge_notebook(released, folder / "06_huge.ipynb")
    (folder / "06_renamed.ipynb").write_bytes((SUBMISSIONS / "08_scaled_by_alpha.ipynb").read_bytes())
    return folder


def _in_chinese(submission: Path, target: Path) -> None:
    """The submission as a learner of the Chinese edition hands it in: the same answers, every markdown
    cell but the written answers in the Chinese student version's words (``assign --lang zh``)."""
    notebook = nbformat.read(submission, as_version=4)
    edition = next((ROOT / "notebooks" / "zh" / "assignments").glob(f"{submission.name[:2]}_*.ipynb"))
    chinese = {c.id: c.source for c in nbformat.read(edition, as_version=4).cells if c.cell_type == "markdown"}
    for cell in notebook.cells:
        if cell.cell_type == "markdown" and not _nbgrader(cell).get("solution") and cell.id in chinese:
            cell.source = chinese[cell.id]
    nbformat.write(notebook, target)


@pytest.fixture(scope="session")
def commands(tmp_path_factory, cheat_dir):
    """Background processes: ``mtl-tutorial grade`` on one batch (the mistake fixtures, a submission whose
    learner rewrote the failing test cell to pass and whose kernel dies in the next part, the cheats),
    a grader process that reports its own peak memory after grading the 100 MB-output cheat, and
    ``nbgrader validate`` on the instructor sources."""
    folder = tmp_path_factory.mktemp("crash")
    notebook = nbformat.read(SUBMISSIONS / "06_projected_twice.ipynb", as_version=4)
    for cell in notebook.cells:
        if _nbgrader(cell).get("grade_id") == "a06_pcgrad":
            cell.source = "print('part 1: tests pass')"
        if _nbgrader(cell).get("grade_id") == "a06_mgda_code":
            cell.source = "import os\nos._exit(1)  # the kernel dies here"
    nbformat.write(notebook, folder / "06_crash.ipynb")
    _in_chinese(SUBMISSIONS / "06_projected_twice.ipynb", folder / "06_projected_twice_zh.ipynb")
    cheats = sorted(str(p) for p in cheat_dir.glob("*.ipynb"))
    paths = [str(SUBMISSIONS / name) for name in MISTAKES] + [str(folder / "06_crash.ipynb"),
                                                              str(folder / "06_projected_twice_zh.ipynb")] + cheats
    report = folder / "report"
    measure = ("import resource, sys; from pathlib import Path; from mtl_tutorial.grading import Limits, grade_batch; "
               "r = grade_batch([Path(sys.argv[1])], limits=Limits(cell_timeout_s=30), unsafe=sys.argv[2] == '1'); "
               "print(r[0].score, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    started = {
        # through this interpreter, not a console script on PATH: no activated environment needed
        "grade": subprocess.Popen([sys.executable, "-m", "mtl_tutorial.cli", "grade", *paths, *UNSAFE, "--workers", "2",
                                   "--time-limit", str(CHEAT_TIME_LIMIT_S), "--csv", str(report / "scores.csv"),
                                   "--feedback", str(report / "feedback")],
                                  cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE),
        "memory": subprocess.Popen([sys.executable, "-c", measure, str(cheat_dir / "06_print_100_mb.ipynb"),
                                    "1" if UNSAFE else "0"], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE),
        "validate": subprocess.Popen([sys.executable, "-m", "nbgrader", "validate", *map(str, SOURCES)],
                                     cwd=ROOT / "notebooks" / "assignments",
                                     text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE),
    }
    finished = {}
    before = _package_and_sources_digest()

    def result(name):
        if name not in finished:
            stdout, stderr = started[name].communicate(timeout=1200)
            finished[name] = subprocess.CompletedProcess(started[name].args, started[name].returncode, stdout, stderr)
        return finished[name]

    result.report_folder = report
    result.digest_before = before
    yield result
    for process in started.values():
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.fixture(scope="session")
def graded(commands, student_dir):
    """(kind, name) -> Report: instructor and student versions and an endless loop, one batch, two at a time."""
    jobs = {("instructor", p.stem): p for p in SOURCES}
    jobs.update({("student", p.stem): student_dir / p.name for p in SOURCES})
    reports = grade_batch(list(jobs.values()), limits=Limits(cell_timeout_s=30), root=ROOT, unsafe=bool(UNSAFE),
                          workers=2)
    graded = dict(zip(jobs, reports))
    start = time.perf_counter()
    loop = grade_batch([SUBMISSIONS / "06_endless_loop.ipynb"], limits=Limits(cell_timeout_s=LOOP_TIMEOUT_S), root=ROOT,
                       unsafe=bool(UNSAFE))
    graded[("loop", "06")] = (loop[0], time.perf_counter() - start)
    return graded


@pytest.fixture(scope="session")
def cli_run(commands):
    """(the finished ``mtl-tutorial grade`` process, submission file name -> its score table)."""
    result = commands("grade")
    tables = {Path(block.split("  ", 1)[0]).name: block for block in result.stdout.strip().split("\n\n")
              if block.strip() and not block.startswith(("scores:", "feedback:"))}
    return result, tables


def _row(table: str, grade_id: str) -> str:
    return next(line for line in table.splitlines() if line.strip().startswith(grade_id + " "))


def _chapter_numbers(text: str) -> list[str]:
    """"01, 02 and 05-09" -> ["01", "02", "05", "06", "07", "08", "09"]."""
    numbers = []
    for first, last in re.findall(r"\b(\d\d)(?:-(\d\d))?\b", text):
        numbers += [f"{n:02d}" for n in range(int(first), int(last or first) + 1)]
    return numbers


def test_every_assignment_has_a_mistake_fixture_and_readme_names_every_assignment():
    assert len(NAMES) >= 7 and len({name[:2] for name in NAMES}) == len(NAMES), NAMES
    assert sorted({assignment for assignment, _, _ in MISTAKES.values()}) == NAMES, "one mistake fixture per assignment"
    for fixture, (assignment, part, _) in MISTAKES.items():
        assert fixture[:3] == assignment[:3] and part.startswith(f"a{assignment[:2]}_"), fixture
    assert {p.name for p in SUBMISSIONS.glob("*.ipynb")} == set(MISTAKES) | OTHER_FIXTURES, "a fixture no test grades"
    readme = (ROOT / "README.md").read_text()
    sentence = re.search(r"Graded assignments for chapters (.+?) live in `notebooks/assignments/`", readme)
    assert sentence and _chapter_numbers(sentence.group(1)) == [name[:2] for name in NAMES], "README's For teachers"


def test_each_assignment_has_3_to_5_autograded_parts_one_written_answer_and_unique_ids():
    chapters = {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")}
    seen = set()
    for path in SOURCES:
        assert path.stem in chapters, f"{path.name} is named like no chapter"
        notebook = nbformat.read(path, as_version=4)
        ids = [_nbgrader(c)["grade_id"] for c in notebook.cells]
        assert all(_nbgrader(c).get("schema_version") == 3 for c in notebook.cells), "nbgrader v3 metadata on every cell"
        assert not seen & set(ids) and len(set(ids)) == len(ids), "grade ids identify the assignment: keep them unique"
        seen |= set(ids)
        tests = [c for c in graded_cells(notebook) if c.cell_type == "code"]
        answers = [c for c in graded_cells(notebook) if c.cell_type == "markdown" and _nbgrader(c)["solution"]]
        assert 3 <= len(tests) <= 5 and len(answers) == 1
        for cell in tests:
            assert "### BEGIN HIDDEN TESTS" in cell.source and "### END HIDDEN TESTS" in cell.source
            assert "from mtl_tutorial" in cell.source, "tests compare with the package's reference implementation"
        code = [c for c in notebook.cells if c.cell_type == "code"]
        assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "commit the source executed, top to bottom"
        assert any(c.outputs for c in code), "commit the source with the outputs of its run"
        assert not [o for c in code for o in c.outputs if o.output_type == "error"], "stored errors"


@pytest.mark.parametrize("name", NAMES)
def test_the_instructor_version_scores_full_points_and_is_flagged(graded, name):
    report = graded[("instructor", name)]
    assert report.score == report.max_score == 8, [(c.grade_id, c.message) for c in report.cells]
    assert [c.message for c in report.cells if c.by_hand] == ["written answer: graded by hand"]
    assert "the answer cells are the instructor source's solutions, word for word" in report.flags


@pytest.mark.parametrize("name", NAMES)
def test_the_student_version_scores_0_and_every_graded_cell_fails_cleanly(graded, student_dir, name):
    report = graded[("student", name)]
    assert not report.refused and not report.flags, (report.refused, report.flags)
    for cell in report.cells:
        assert cell.score == 0, cell
        expected = "not answered" if cell.by_hand else "NotImplementedError: not written yet"
        assert cell.message.startswith(expected), cell
    released = (student_dir / f"{name}.ipynb").read_text()
    instructor = nbformat.read(ROOT / "notebooks" / "assignments" / f"{name}.ipynb", as_version=4)
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "for trial in"):
        assert marker not in released, f"{marker!r} leaked into the student version"
    answer = next(c.source for c in instructor.cells if c.cell_type == "markdown" and _nbgrader(c).get("solution"))
    assert answer[:40] not in released
    student = nbformat.read(student_dir / f"{name}.ipynb", as_version=4)
    assert all(_nbgrader(c).get("checksum") for c in graded_cells(student)), "nbgrader checksums"
    assert all(c.metadata.get("editable") is False for c in student.cells if _nbgrader(c).get("locked"))


@pytest.mark.parametrize("fixture", list(MISTAKES))
def test_one_mistake_costs_its_part_and_the_message_names_it(cli_run, fixture):
    _, tables = cli_run
    assignment, part, words = MISTAKES[fixture]
    table = tables[fixture]
    assert f"(assignment {assignment})" in table.splitlines()[0]
    source = nbformat.read(ROOT / "notebooks" / "assignments" / f"{assignment}.ipynb", as_version=4)
    points = {_nbgrader(c)["grade_id"]: _nbgrader(c)["points"] for c in graded_cells(source) if not _nbgrader(c)["solution"]}
    assert re.search(rf"0 / {points[part]} +AssertionError: your .* is -?\d+\.\d{{4}}, expected -?\d+\.\d{{4}}: ",
                     _row(table, part))
    assert words in _row(table, part)
    assert table.splitlines()[-1] == f"total  {8 - points[part]} / 8"
    assert sum(1 for line in table.splitlines() if line.endswith(" ok")) == len(points) - 1


def test_a_submission_whose_kernel_dies_is_graded_and_the_batch_goes_on(cli_run):
    result, tables = cli_run
    assert result.returncode in (0, 2) and "Traceback" not in result.stderr, result.stderr
    table = tables["06_crash.ipynb"]
    assert "0 / 3    did not run: the kernel died in an earlier cell" in _row(table, "a06_mgda")
    assert "did not run" in _row(table, "a06_cosine")
    assert table.splitlines()[-1] == "total  0 / 8"


def test_an_endless_loop_is_stopped_by_the_cell_timeout_and_graded(graded):
    report, seconds = graded[("loop", "06")]
    scores = {c.grade_id: (c.score, c.message) for c in report.cells}
    assert scores["a06_cosine"] == (0, f"stopped after {LOOP_TIMEOUT_S} s, the time limit per cell (an endless loop?)")
    assert scores["a06_pcgrad"] == (3, "") and scores["a06_mgda"] == (3, "")
    assert seconds < 180


def test_grading_restores_the_tests_a_learner_edited(cli_run):
    _, tables = cli_run
    assert "0 / 3    AssertionError: your α for task 1 is" in _row(tables["06_crash.ipynb"], "a06_pcgrad")


def test_nbgrader_validate_passes_on_the_instructor_versions(commands):
    result = commands("validate")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("Success! Your notebook passes all the tests.") == len(SOURCES), result.stdout


def test_grade_explains_files_it_cannot_grade(tmp_path, capsys):
    foreign = nbformat.read(SUBMISSIONS / "08_scaled_by_alpha.ipynb", as_version=4)
    for cell in foreign.cells:
        if _nbgrader(cell):
            cell.metadata.nbgrader["grade_id"] = "another_course_" + cell.metadata.nbgrader["grade_id"]
    nbformat.write(foreign, tmp_path / "foreign.ipynb")
    (tmp_path / "notes.ipynb").write_text("not json")
    paths = [tmp_path / "missing.ipynb", tmp_path / "notes.ipynb", ROOT / "notebooks" / "00_getting_started.ipynb",
             tmp_path / "foreign.ipynb"]
    assert cli.main(["grade", *map(str, paths), *UNSAFE]) == 2
    out = capsys.readouterr().out
    assert f"not graded: {paths[0]} does not exist; give the path of a submitted .ipynb file" in out
    assert "notes.ipynb is not a Jupyter notebook (NotJSONError)" in out
    assert "00_getting_started.ipynb is not an assignment: none of its cells carries nbgrader metadata" in out
    assert "foreign.ipynb is not one of this course's assignments" in out and "match none of: 01_multitask" in out
    assert out.count("\ntotal  0 / ?") == 4, "a table for every file"


def test_grade_passes_its_limits_and_refuses_bad_ones(monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr("mtl_tutorial.grading.grade_batch", lambda paths, **kw: seen.update(kw) or [])
    assert cli.main(["grade", "x.ipynb", "--unsafe-no-sandbox", "--timeout", "7", "--time-limit", "90",
                     "--memory-gib", "12", "--workers", "3"]) == 0
    limits = seen["limits"]
    assert (limits.cell_timeout_s, limits.wall_s, limits.memory_bytes, seen["workers"]) == (7, 90, 12 * 2**30, 3)
    with pytest.raises(SystemExit):
        cli.main(["grade", "x.ipynb", "--memory-gib", "0"])
    assert "--memory-gib" in capsys.readouterr().err


def test_without_bubblewrap_grade_refuses_unless_told_it_is_unsafe(monkeypatch, capsys):
    monkeypatch.setattr("mtl_tutorial.grading.sandbox.shutil.which", lambda name: None)
    assert cli.main(["grade", str(SUBMISSIONS / "06_projected_twice.ipynb")]) == 3
    err = capsys.readouterr().err
    assert "bubblewrap is not installed: on Debian/Ubuntu `sudo apt install bubblewrap`" in err
    assert "add --unsafe-no-sandbox" in err


def test_assign_names_the_assignments_and_protects_the_sources(tmp_path, capsys):
    assert cli.main(["assign", "99", "--output", str(tmp_path / "out")]) == 2
    assert "error: unknown assignment '99'; assignments are: 01_multitask_objective, " in capsys.readouterr().err
    assert not (tmp_path / "out").exists(), "nothing is written for a wrong name"
    assert cli.main(["assign", "--output", str(ROOT / "notebooks" / "assignments")]) == 2
    assert "is where the instructor sources live" in capsys.readouterr().err
    assert build_student_versions(tmp_path / "one", ["6"], ROOT) == [tmp_path / "one" / "06_gradient_alignment.ipynb"]


def test_a_fixture_submission_is_a_student_version_with_answers(student_dir):
    """Fixtures stay in step with the sources: same cells, locked cells unchanged (bar outputs)."""
    for fixture, (assignment, _, _) in MISTAKES.items():
        submitted = json.loads((SUBMISSIONS / fixture).read_text())["cells"]
        released = json.loads((student_dir / f"{assignment}.ipynb").read_text())["cells"]
        assert [c["metadata"]["nbgrader"]["grade_id"] for c in submitted] == [
            c["metadata"]["nbgrader"]["grade_id"] for c in released]
        for mine, theirs in zip(submitted, released):
            if mine["metadata"]["nbgrader"]["locked"]:
                assert mine["source"] == theirs["source"], f"{fixture}: rebuild it from `mtl-tutorial assign`"


def test_grade_cli_prints_per_cell_points_and_the_total_line(cli_run):
    result, tables = cli_run
    table = tables["06_projected_twice.ipynb"]
    assert table.splitlines()[0] == f"{SUBMISSIONS / '06_projected_twice.ipynb'}  (assignment 06_gradient_alignment)"
    assert "a06_experiment    ? / 2    written answer: graded by hand" in table


def test_a_submission_of_the_chinese_edition_is_graded_as_the_english_one(cli_run):
    _, tables = cli_run
    english, chinese = tables["06_projected_twice.ipynb"], tables["06_projected_twice_zh.ipynb"]
    assert chinese.splitlines()[1:] == english.splitlines()[1:]


# -- cheats: none may score more than a blank submission ---------------------------------------------


@pytest.mark.parametrize("cheat", list(CHEATS))
def test_no_cheat_scores_more_than_a_blank_submission(cli_run, cheat):
    _, tables = cli_run
    table = tables[f"06_{cheat}.ipynb"]
    assert table.splitlines()[-1] == "total  0 / 8", table


def test_what_a_cheat_meets_is_named(cli_run):
    _, tables = cli_run
    assert "0 / 3    pcgrad_two_tasks on the grader's inputs: case 1 differs from the reference" in tables[
        "06_patch_check_close.ipynb"], "the visible test passed in the kernel; the probe outside did not"
    assert "did not run: something in the notebook kept later cells from running as written" in tables[
        "06_rewrite_later_cells.ipynb"]
    assert "did not finish (SystemExit: bye), so what it should define could not be tested" in tables[
        "06_exit_in_answer.ipynb"]
    if not UNSAFE:
        assert "No such file or directory" in tables["06_read_instructor_source.ipynb"], "the sources are not in the sandbox"
    ignored = tables["06_ignore_interrupts.ipynb"]
    assert ("a cell ran past the time limit per cell and ignored the interrupt, which ends the run" in ignored
            or f"stopped after {CHEAT_TIME_LIMIT_S} s, the time limit for a whole submission" in ignored), ignored
    for cheat in ("patch_check_close", "patch_torch", "silence_errors", "rewrite_later_cells", "read_instructor_source"):
        assert "  flag: answer cell a06_pcgrad_code uses " in tables[f"06_{cheat}.ipynb"], cheat


def test_handing_in_the_instructor_source_or_calling_the_reference_is_flagged(cli_run):
    _, tables = cli_run
    source = tables["06_instructor_source.ipynb"]
    assert source.splitlines()[-1] == "total  8 / 8"
    assert "  flag: the answer cells are the instructor source's solutions, word for word" in source
    reference = tables["06_calls_the_reference.ipynb"]
    assert "a06_pcgrad        3 / 3    ok" in reference
    assert "  flag: answer cell a06_pcgrad_code uses mtl_tutorial: does it call the references" in reference


def test_a_right_answer_that_writes_to_stderr_keeps_its_points(cli_run):
    _, tables = cli_run
    row = _row(tables["06_honest_with_warning.ipynb"], "a06_pcgrad")
    assert row.split()[1:4] == ["3", "/", "3"] and "it wrote to stderr, which costs nothing: UserWarning" in row


def test_oversized_and_misnamed_files_are_refused_and_the_batch_goes_on(cli_run):
    result, tables = cli_run
    assert result.returncode == 2, "a file could not be graded"
    assert "is 191 MiB, more than the 16 MiB a submission may be: clear its outputs" in tables["06_huge.ipynb"]
    assert "is named like assignment 06 but its graded cells are those of 08_lora" in tables["06_renamed.ipynb"]
    assert tables["06_write_the_grader.ipynb"].splitlines()[-1] == "total  0 / 8", "graded after all the cheats"


def test_a_batch_leaves_the_package_and_the_instructor_sources_byte_identical(commands, cli_run):
    assert _package_and_sources_digest() == commands.digest_before


def test_the_grader_stays_under_1_gib_while_a_submission_prints_100_mb(commands):
    result = commands("memory")
    assert result.returncode == 0, result.stderr
    score, peak_kib = result.stdout.split()
    assert float(score) == 0 and int(peak_kib) < 1024 * 1024, result.stdout


def test_csv_and_feedback_files_cover_every_submission_and_part(commands, cli_run):
    result, tables = cli_run
    folder = commands.report_folder
    rows = list(csv.DictReader(open(folder / "scores.csv")))
    assert {row["submission"] for row in rows} == {block.split("  ", 1)[0] for block in tables.values()}
    row = next(r for r in rows if r["submission"].endswith("06_projected_twice.ipynb") and r["part"] == "a06_pcgrad")
    assert (row["score"], row["max_score"], row["graded_by"]) == ("0", "3", "grader")
    feedback = sorted((folder / "feedback").glob("*.feedback.md"))
    assert len(feedback) == len(tables)
    written = (folder / "feedback" / "written_answers.md").read_text()
    assert "## 06_gradient_alignment · a06_experiment" in written and "06_instructor_source.ipynb" in written


@pytest.mark.skipif(bool(UNSAFE), reason="no bubblewrap on this machine")
def test_the_sandbox_has_no_network_no_other_processes_no_sources_and_a_read_only_package(tmp_path):
    from mtl_tutorial.grading.sandbox import run_sandboxed

    checks = (
        "import os, socket, pathlib, mtl_tutorial\n"
        "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=3); print('network: yes')\n"
        "except OSError:\n    print('network: no')\n"
        "print('processes:', sorted(int(p) for p in os.listdir('/proc') if p.isdigit())[-1] < 100)\n"
        "root = pathlib.Path(mtl_tutorial.__file__).parents[1]\n"
        "print('sources:', (root / 'notebooks').exists(), (root / 'tests').exists())\n"
        "try:\n    (pathlib.Path(mtl_tutorial.__file__)).write_text('')\n    print('package: writable')\n"
        "except OSError:\n    print('package: read-only')\n"
    )
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(checks)])
    nbformat.write(notebook, tmp_path / "probe.ipynb")
    run = run_sandboxed(tmp_path / "probe.ipynb", [], 0, Limits(cell_timeout_s=60))
    executed = nbformat.read(run.out / "executed.ipynb", as_version=4)
    shutil.rmtree(run.out.parent)
    text = "".join(o.get("text", "") for o in executed.cells[0].outputs)
    assert run.ended == "normally", run.ended
    assert text.split("\n")[:4] == ["network: no", "processes: True", "sources: False False", "package: read-only"], text


def test_the_package_in_an_experiment_cell_is_not_flagged_in_an_autograded_answer_it_is():
    """An experiment's code may use the package (its written answer is graded by hand); an autograded part's
    answer that imports it may be calling the reference it is graded against."""
    from mtl_tutorial.grading.assignments import student_version
    from mtl_tutorial.grading.grade import _flags

    source_path = ROOT / "notebooks" / "assignments" / "06_gradient_alignment.ipynb"
    source, released = nbformat.read(source_path, as_version=4), student_version(source_path)
    submission = nbformat.read(source_path, as_version=4)
    for cell in submission.cells:
        if _nbgrader(cell).get("grade_id") == "a06_experiment_code":
            cell.source = "from mtl_tutorial.aggregation import pcgrad_weights\nprint(pcgrad_weights)"
        if _nbgrader(cell).get("grade_id") == "a06_mgda_code":
            cell.source += "\nfrom mtl_tutorial import aggregation"
    flags = _flags(submission, source, released)
    assert [flag for flag in flags if "uses" in flag] == [
        "answer cell a06_mgda_code uses mtl_tutorial: does it call the references or reach into the grader's checks?"]
