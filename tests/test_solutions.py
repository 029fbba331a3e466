"""Every chapter's Exercises have a worked solutions notebook, linked both ways, with one section per exercise.

nbval runs the solutions notebooks like the chapters (README's test command collects notebooks/solutions);
tests/test_notebooks_committed.py checks that they were committed after a full-mode run.
"""

import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CHAPTERS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def solutions_path(chapter: Path) -> Path:
    return NOTEBOOKS / "solutions" / f"{chapter.stem}_solutions.ipynb"


def exercises_section(chapter: Path) -> str:
    markdown = "\n".join(c.source for c in nbformat.read(chapter, as_version=4).cells if c.cell_type == "markdown")
    return markdown.split("## Exercises", 1)[1]


def exercise_count(chapter: Path) -> int:
    return len(re.findall(r"^\d+\. ", exercises_section(chapter), re.M))


def test_solutions_notebooks_belong_to_chapters():
    names = {solutions_path(chapter).name for chapter in CHAPTERS}
    strays = [path.name for path in (NOTEBOOKS / "solutions").glob("*.ipynb") if path.name not in names]
    assert not strays, f"solutions notebooks without a chapter: {strays}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_every_exercise_has_a_worked_solution_linked_from_its_chapter(chapter):
    path = solutions_path(chapter)
    assert path.exists(), f"{chapter.name} has no solutions notebook {path.relative_to(NOTEBOOKS)}"
    assert f"(solutions/{path.name})" in exercises_section(chapter), "the Exercises section links to its solutions"
    cells = nbformat.read(path, as_version=4).cells
    assert cells[0].cell_type == "markdown" and f"(../{chapter.name})" in cells[0].source, "cell 0 links back to the chapter"
    assert re.search(r"Expected runtime.*fast CPU.*full CPU.*full GPU", cells[0].source)
    headings = [line for c in cells if c.cell_type == "markdown" for line in c.source.splitlines() if line.startswith("## ")]
    expected = [f"## Exercise {k}" for k in range(1, exercise_count(chapter) + 1)]
    assert [h for h in headings if h.startswith("## Exercise")] == expected, "one '## Exercise k' section per exercise, in order"
    assert set(headings) <= {*expected, "## Summary"}, f"unexpected sections: {sorted(set(headings) - {*expected, '## Summary'})}"
    for k, cell in enumerate(cells):
        if cell.cell_type == "markdown" and cell.source.startswith("## Exercise"):
            assert "\n>" in cell.source, f"{cell.source.splitlines()[0]} quotes the exercise (a '> ' blockquote)"
            following = cells[k + 1:k + 2]
            assert following and following[0].cell_type == "code", f"{cell.source.splitlines()[0]} is followed by code"
    tagged = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged `parameters`"
