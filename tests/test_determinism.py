"""Same seed, same numbers: a chapter run twice prints the same checked outputs."""

from pathlib import Path

import nbformat

from mtl_tutorial.chapters import run_notebook

CHAPTER = Path(__file__).resolve().parents[1] / "notebooks" / "00_getting_started.ipynb"
CHECK = "# NBVAL_CHECK_OUTPUT"


def _checked_outputs(notebook: Path) -> list[list[tuple]]:
    """For each ``# NBVAL_CHECK_OUTPUT`` cell: its outputs as (type, stream name, text), with
    consecutive chunks of one stream joined (how a print is split into messages varies by run)."""
    cells = [c for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "code"]
    checked = []
    for cell in cells:
        if CHECK not in cell.source:
            continue
        outputs: list[tuple] = []
        for o in cell.outputs:
            entry = (o.output_type, o.get("name"), o.get("text") or o.get("data", {}).get("text/plain"))
            if outputs and entry[0] == "stream" and outputs[-1][:2] == entry[:2]:
                outputs[-1] = (*entry[:2], outputs[-1][2] + entry[2])
            else:
                outputs.append(entry)
        checked.append(outputs)
    return checked


def test_same_seed_same_numbers_in_the_checked_cells(tmp_path, monkeypatch):
    monkeypatch.setenv("MTL_TUTORIAL_FAST", "1")
    for run in ("first", "second"):
        run_notebook(CHAPTER, tmp_path / run / CHAPTER.name, progress=False)
    first, second = (_checked_outputs(tmp_path / run / CHAPTER.name) for run in ("first", "second"))
    assert len(first) >= 2 and all(first), "every checked cell must print something to compare"
    assert all(kind != "error" for outputs in first for kind, _, _ in outputs)
    assert first == second
