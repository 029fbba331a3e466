"""Submissions that try to get marks without the work, built from the student version of assignment 06.

Each cheat replaces the first answer cell (``a06_pcgrad_code``); the other parts stay unanswered, so an
honest blank scores 0 / 8 and no cheat may score more. ``HONEST_WITH_WARNING`` is a right answer that
also writes to stderr (it keeps its points).
"""

from __future__ import annotations

from pathlib import Path

import nbformat

WRONG = "def pcgrad_two_tasks(gram):\n    return torch.ones(2, dtype=torch.float64)\n"

CHEATS = {
    # in-kernel patching of what the visible tests compare with
    "patch_check_close": "import mtl_tutorial.grading as g, mtl_tutorial.grading.hints as h\n"
                         "g.check_close = h.check_close = lambda *a, **k: None\n" + WRONG,
    "patch_torch": "torch.allclose = lambda *a, **k: True\ntorch.Tensor.any = lambda self, *a, **k: False\n"
                   "import mtl_tutorial.aggregation as agg\nagg.pcgrad_weights = lambda gram: torch.ones(2, dtype=torch.float64)\n"
                   + WRONG,
    "silence_errors": "get_ipython().set_custom_exc((BaseException,), lambda *a, **k: None)\n"
                      "def pcgrad_two_tasks(gram):\n    raise ValueError('not done')\n",
    "rewrite_later_cells": "get_ipython().input_transformers_post.append(lambda lines: ['print(\"part 1: tests pass\")\\n'])\n",
    "forge_probe_files": "import json, pathlib\nfor part in ('a06_pcgrad', 'a06_mgda', 'a06_cosine'):\n"
                         "    pathlib.Path(f'/out/probe_{part}.json').write_text(json.dumps({'result': {'list': []}}))\n"
                         "get_ipython().input_transformers_post.append(lambda lines: [] if '__mtl_probe_run' in ''.join(lines) else lines)\n",
    # reading what it should not: the instructor source, a classmate's files through /proc
    "read_instructor_source": "import json, pathlib, mtl_tutorial\n"
                              "source = pathlib.Path(mtl_tutorial.__file__).parents[1] / 'notebooks' / 'assignments' / '06_gradient_alignment.ipynb'\n"
                              "for cell in json.loads(source.read_text())['cells']:\n"
                              "    if cell['cell_type'] == 'code' and 'def ' in ''.join(cell['source']):\n"
                              "        exec(''.join(cell['source']))\n",
    "read_other_processes": "import pathlib, json\nfor cmdline in pathlib.Path('/proc').glob('[0-9]*/cmdline'):\n"
                            "    for word in cmdline.read_bytes().split(b'\\0'):\n"
                            "        if word.endswith(b'.ipynb') and pathlib.Path(word.decode()).is_file():\n"
                            "            for cell in json.loads(pathlib.Path(word.decode()).read_text())['cells']:\n"
                            "                if 'def pcgrad_two_tasks' in ''.join(cell['source']):\n"
                            "                    exec(''.join(cell['source']))\n",
    # writing what it should not: the package and the instructor sources, for everyone graded after
    "write_the_grader": "import pathlib, mtl_tutorial\nroot = pathlib.Path(mtl_tutorial.__file__).parent\n"
                        "for name in ('grading/grade.py', 'grading/probes.py', 'grading/parts.py'):\n"
                        "    try:\n        (root / name).write_text('# gone')\n    except OSError:\n        pass\n" + WRONG,
    # breaking the grader
    "ignore_interrupts": "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass\n",
    "print_100_mb": "import sys\nfor _ in range(100):\n    sys.stdout.write('x' * 1_000_000)\n" + WRONG,
    "exit_in_answer": "import sys\nsys.exit('bye')\n",
}

HONEST_WITH_WARNING = ("import warnings\n"
                       "def pcgrad_two_tasks(gram):\n"
                       "    warnings.warn('a harmless warning')\n"
                       "    gram = gram.double()\n    alpha = torch.ones(2, dtype=torch.float64)\n    dot = gram[0, 1]\n"
                       "    if dot < 0:\n        alpha[1] -= dot / gram[1, 1]\n        alpha[0] -= dot / gram[0, 0]\n"
                       "    return alpha\n")

CALLS_THE_REFERENCE = ("from mtl_tutorial.aggregation import pcgrad_weights\n"
                       "def pcgrad_two_tasks(gram):\n    return pcgrad_weights(gram.double())\n")


def write_submission(student_version: Path, answer: str, path: Path) -> Path:
    """The student version with ``answer`` as the source of its first answer cell, written to ``path``."""
    notebook = nbformat.read(student_version, as_version=4)
    cell = next(c for c in notebook.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "a06_pcgrad_code")
    cell.source = answer
    nbformat.write(notebook, path)
    return path


def write_huge_notebook(student_version: Path, path: Path, megabytes: int = 200) -> Path:
    """A student version carrying ``megabytes`` MB of text in a markdown cell (written without building it in memory twice)."""
    notebook = nbformat.read(student_version, as_version=4)
    notebook.cells.append(nbformat.v4.new_markdown_cell("PLACEHOLDER"))
    head, tail = nbformat.writes(notebook).split("PLACEHOLDER")
    with open(path, "w") as handle:
        handle.write(head)
        for _ in range(megabytes):
            handle.write("y" * 1_000_000)
        handle.write(tail)
    return path
