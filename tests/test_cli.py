import hashlib
import importlib.metadata as metadata
import shutil
import subprocess
from pathlib import Path

import pytest

from mtl_tutorial import cli
from mtl_tutorial.chapters import list_chapters, project_root, read_chapter_table, resolve_chapters

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_every_verb_has_help():
    for verb in ([], ["doctor"], ["list"], ["run"], ["bench"]):
        result = subprocess.run(["mtl-tutorial", *verb, "--help"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "usage: mtl-tutorial" in result.stdout


def test_doctor_passes_offline_and_reports_the_backbone():
    result = subprocess.run(["mtl-tutorial", "doctor"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all-MiniLM-L6-v2: 22.7M parameters, loaded in" in result.stdout
    assert "PROBLEM" not in result.stdout
    for package in ("torch", "transformers", "peft", "jupyterlab", "ipywidgets", "nbval"):
        assert f"ok       {package} " in result.stdout
    for task in ("sentiment", "condition", "supersense", "pos"):
        assert f"ok       task {task} " in result.stdout


def test_doctor_flags_a_missing_package_and_a_bad_mode(monkeypatch, capsys):
    real_version = metadata.version

    def version(name):
        if name == "peft":
            raise metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(metadata, "version", version)
    monkeypatch.setenv("MTL_TUTORIAL_FAST", "maybe")
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM  peft" in out and "pip install 'peft>=" in out
    assert "PROBLEM  mode" in out
    assert "2 problem(s): peft, mode" in out


def test_doctor_flags_a_version_outside_the_range(monkeypatch, capsys):
    real_version = metadata.version
    monkeypatch.setattr(metadata, "version", lambda n: "5.24.0" if n == "transformers" else real_version(n))
    assert cli.main(["doctor"]) == 1
    assert "5.24.0 is installed but the course needs transformers<5.24" in capsys.readouterr().out


def test_list_shows_titles_and_readme_runtimes(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    chapter_00 = read_chapter_table(ROOT / "README.md")[0]
    line = next(line for line in out.splitlines() if line.startswith("00 "))
    assert "Getting started" in line and "00_getting_started.ipynb" in line
    assert chapter_00.runtimes["fast CPU"] in line
    assert "(not written yet)" in out  # later chapters are listed before they exist


def test_readme_table_covers_every_notebook_with_measured_runtimes():
    chapters = list_chapters(ROOT)
    numbers = [c.number for c in chapters]
    assert numbers == sorted(numbers) and numbers[0] == "00"
    on_disk = {p.name[:2] for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert on_disk <= set(numbers), "a notebook is missing from README.md's chapter table"
    for chapter in chapters:
        if chapter.path is not None:
            assert chapter.runtimes["fast CPU"] not in ("planned", "n/a"), chapter
            assert chapter.runtimes["full CPU"] not in ("planned", "n/a"), chapter


def test_resolve_chapters_names_the_valid_ones():
    assert resolve_chapters(["0"], ROOT)[0].name == "00_getting_started.ipynb"
    assert resolve_chapters(["00_getting_started"], ROOT)[0].name == "00_getting_started.ipynb"
    with pytest.raises(ValueError, match="unknown chapter '99'; chapters are: 00"):
        resolve_chapters(["99"], ROOT)
    assert project_root() == ROOT


def _digest(folder: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.glob("*.ipynb")))).hexdigest()


def test_run_fast_00_prints_the_timing_table_and_leaves_notebooks_alone(tmp_path):
    before = _digest(ROOT / "notebooks")
    result = subprocess.run(
        ["mtl-tutorial", "run", "--fast", "--output", str(tmp_path), "00"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "00_getting_started" in result.stdout and "fast" in result.stdout
    assert "total" in result.stdout
    assert (tmp_path / "00_getting_started.ipynb").is_file()
    assert _digest(ROOT / "notebooks") == before


def test_run_stops_at_the_failing_cell_with_exit_1(tmp_path):
    notebook = tmp_path / "broken_chapter.ipynb"
    shutil.copy(FIXTURES / "broken_chapter.ipynb", notebook)
    out_dir = tmp_path / "out"
    result = subprocess.run(
        ["mtl-tutorial", "run", "--fast", "--output", str(out_dir), str(notebook)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1
    assert "broken_chapter.ipynb failed in cell 3 (code cell 3): ZeroDivisionError" in result.stderr
    assert (out_dir / "broken_chapter.ipynb").is_file(), "the partly executed notebook must be kept"
