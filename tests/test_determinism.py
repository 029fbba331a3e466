"""Same seed, same numbers: a chapter run twice prints the same checked outputs."""

from pathlib import Path

import nbformat

from mtl_tutorial.chapters import run_notebook

CHAPTER = Path(__file__).resolve().parents[1] / "notebooks" / "00_getting_started.ipynb"
CHECK = "# NBVAL_CHECK_OUTPUT"


def _checked_outputs(notebook: Path) -> list[list[tuple]]:
    """For each ``# NBVAL_CHECK_OUTPUT`` cell: its outputs as (type, stream name, text)."""
    cells = [c for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "code"]
    return [
        [(o.output_type, o.get("name"), o.get("text") or o.get("data", {}).get("text/plain"))
         for o in c.outputs]
        for c in cells if CHECK in c.source
    ]


def test_same_seed_same_numbers_in_the_checked_cells(tmp_path, monkeypatch):
    monkeypatch.setenv("MTL_TUTORIAL_FAST", "1")
    for run in ("first", "second"):
        run_notebook(CHAPTER, tmp_path / run / CHAPTER.name, progress=False)
    first, second = (_checked_outputs(tmp_path / run / CHAPTER.name) for run in ("first", "second"))
    assert len(first) >= 2 and all(first), "every checked cell must print something to compare"
    assert all(kind != "error" for outputs in first for kind, _, _ in outputs)
    assert first == second
