"""What runs inside a submission's sandbox: the notebook, then the grader's probes, in one kernel.

    python -m mtl_tutorial.grading.runner NOTEBOOK OUT --timeout 30 --seed 12345 --probes a06_pcgrad,a06_mgda

Executes NOTEBOOK (its folder is the working folder) with nbgrader's ``Execute`` (it keeps going after
a failing cell and interrupts one at its time limit), with one cell appended per probe
(``probes.probe_cell``), each writing ``OUT/probe_<grade_id>.json``. Writes ``OUT/executed.ipynb`` (the probe cell
removed, each cell's outputs capped at ``MAX_CELL_OUTPUT_BYTES``) and ``OUT/status.json`` (how the run
ended). Everything here is as untrusted as the learner's code: the grader reads these files with size
limits and decides nothing from them but feedback text and the probes' values.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

MAX_CELL_OUTPUT_BYTES = 100_000  # per cell: a cell that prints more keeps its first 100 kB
EXECUTED_FILE = "executed.ipynb"
STATUS_FILE = "status.json"


def cap_outputs(cell: Any, limit: int = MAX_CELL_OUTPUT_BYTES) -> bool:
    """Cut a code cell's outputs to ``limit`` bytes of text (images over the limit dropped); True if cut."""
    kept, used, cut = [], 0, False
    for output in cell.get("outputs", []):
        size = len(json.dumps(output, default=str))
        if used + size <= limit:
            kept.append(output)
            used += size
            continue
        cut = True
        if output.get("output_type") == "stream":
            room = max(limit - used, 0)
            output["text"] = str(output.get("text", ""))[:room] + "\n[output cut by the grader]\n"
            kept.append(output)
        break
    cell["outputs"] = kept
    return cut


def run(notebook_path: Path, out: Path, timeout: int, seed: int, grade_ids: list[str]) -> dict:
    """Execute the notebook and the probes; write the three files; return the status."""
    import nbformat
    from nbgrader.preprocessors import Execute
    from traitlets.config import Config

    from mtl_tutorial.chapters import IOPUB_TIMEOUT_S, PatientKernelClient
    from mtl_tutorial.grading.parts import PROBES
    from mtl_tutorial.grading.probes import probe_cell, result_file

    notebook = nbformat.read(notebook_path, as_version=4)
    num_cells = len(notebook.cells)
    for grade_id in grade_ids:  # one cell per probe: each has the time limit per cell
        source = probe_cell(grade_id, PROBES[grade_id], seed, str(out / result_file(grade_id)))
        notebook.cells.append(nbformat.v4.new_code_cell(source))
    executor = Execute(
        timeout=timeout,
        iopub_timeout=IOPUB_TIMEOUT_S,
        kernel_name="python3",
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
        config=Config({"AsyncKernelManager": {"client_factory": PatientKernelClient}}),
    )
    status = {"ended": "normally"}
    try:
        executor.preprocess(notebook, {"metadata": {"path": str(notebook_path.parent)}})
    except Exception as err:  # DeadKernelError, a kernel that never started, a timeout nbclient let escape
        status = {"ended": type(err).__name__, "message": str(err)[:300]}
    notebook.cells = notebook.cells[:num_cells]
    status["cut_cells"] = [k for k, cell in enumerate(notebook.cells) if cell.cell_type == "code" and cap_outputs(cell)]
    nbformat.write(notebook, out / EXECUTED_FILE)
    (out / STATUS_FILE).write_text(json.dumps(status))
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtl_tutorial.grading.runner")
    parser.add_argument("notebook", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--timeout", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--probes", default="")
    args = parser.parse_args(argv)
    run(args.notebook, args.out, args.timeout, args.seed, [g for g in args.probes.split(",") if g])
    return 0


if __name__ == "__main__":
    sys.exit(main())
