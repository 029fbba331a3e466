"""`mtl-tutorial course init` and nbgrader's whole path on a local exchange, as README describes it."""

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mtl_tutorial import cli
from mtl_tutorial.grading.course import init_course

SUBMISSIONS = Path(__file__).resolve().parent / "fixtures" / "submissions"
NAME = "06_gradient_alignment"


def nbgrader(*args, cwd):
    result = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=cwd, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_generate_release_fetch_submit_collect_autograde_export_on_a_local_exchange(tmp_path, capsys):
    course, student = tmp_path / "course", tmp_path / "alice"
    assert cli.main(["course", "init", str(course), "06", "--course-id", "demo"]) == 0
    printed = capsys.readouterr().out
    assert "nbgrader fetch_assignment NN_slug" in printed and "nbgrader export" in printed
    student.mkdir()
    shutil.copyfile(course / "student_nbgrader_config.py", student / "nbgrader_config.py")
    nbgrader("generate_assignment", NAME, cwd=course)
    nbgrader("release_assignment", NAME, cwd=course)
    nbgrader("fetch_assignment", NAME, cwd=student)
    fetched = student / NAME / f"{NAME}.ipynb"
    assert fetched.is_file()
    shutil.copyfile(SUBMISSIONS / "06_projected_twice.ipynb", fetched)  # the learner's answers: part 1 wrong
    nbgrader("submit", NAME, cwd=student)
    nbgrader("collect", NAME, cwd=course)
    nbgrader("autograde", NAME, cwd=course)
    nbgrader("export", cwd=course)
    rows = list(csv.DictReader(open(course / "grades.csv")))
    assert len(rows) == 1 and rows[0]["assignment"] == NAME
    assert float(rows[0]["raw_score"]) == 5.0 and float(rows[0]["max_score"]) == 10.0


def test_course_init_refuses_a_running_course_and_a_bad_id(tmp_path, capsys):
    init_course(tmp_path / "c", names=["06"])
    assert (tmp_path / "c" / "source" / NAME / f"{NAME}.ipynb").is_file()
    assert cli.main(["course", "init", str(tmp_path / "c")]) == 2
    assert "already holds an nbgrader_config.py" in capsys.readouterr().err
    with pytest.raises(ValueError, match="use letters, digits"):
        init_course(tmp_path / "d", course_id="my course")
    assert not (tmp_path / "d").exists()
