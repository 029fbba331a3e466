"""The study runner: a chapter's experiment as a grid of runs, each line of its results file one run.

A ``Study`` is a named grid of configs (method × setting × seed; each a JSON-able dict) and a run
function ``run(config, device) -> metrics``. ``run_study`` runs the grid and appends one JSON line per
finished run to ``notebooks/results/NN_slug.jsonl``:

    {"study", "config", "config_hash", "metrics", "seconds", "device", "threads", "versions",
     "commit", "code_changed", "date"}

- Resumable: a config whose hash is already in the file is skipped; a killed study loses at most the
  run in progress (each line is written whole, flushed and synced; a torn last line is cut off on
  the next start). A changed config has a new hash, so only what changed runs again.
- Borrowing: a study may name other studies whose files hold some of the same runs (chapter 10 runs
  chapter 07's adapters again); such a line is copied with ``"borrowed_from"``.
- Provenance: ``commit`` is the package's git commit; ``code_changed`` says whether the package had
  uncommitted changes (``run_study`` refuses them unless asked, so a committed file records the
  code that produced it). A copy without ``.git`` proves both with a manifest (``provenance``).

``load_study`` reads a committed file back (``StudyResults``); ``reproduction_verdict`` compares a
live re-run of a few configs with the file's lines.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from mtl_tutorial.evidence import Comparison
from mtl_tutorial.runtime import check_device, project_root
from mtl_tutorial.studies.provenance import code_provenance
from mtl_tutorial.training import History

RESULTS_FOLDER = Path("notebooks") / "results"
UNHASHED_KEYS = ("label",)  # display names: renaming a run does not rerun it


def config_hash(config: Mapping[str, Any]) -> str:
    """16 hex digits of the SHA-256 of the config as canonical JSON (sorted keys), ``label`` left out."""
    try:
        text = json.dumps({k: v for k, v in config.items() if k not in UNHASHED_KEYS}, sort_keys=True,
                          separators=(",", ":"))
    except TypeError as err:
        raise TypeError(f"a study config must hold only JSON values (str, int, float, bool, None, lists, "
                        f"dicts): {err}") from err
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Study:
    """A chapter's experiment.

    grid(seeds, fast) -> configs (each with at least ``label`` and ``seed``); run(config, device,
    keep_model) -> (metrics (JSON-able), the trained model or None); estimate_seconds(config): a run's time on a 2-core CPU, for ``--dry-run``
    and the progress bar. primary: the comparisons the chapter's question rests on, declared here,
    before the study runs (``evidence.family_intervals``). default_seeds: chosen with
    ``evidence.seeds_for_power`` from a pilot (the study module says which).
    """

    chapter: str
    slug: str
    question: str
    grid: Callable[[Sequence[int], bool], list[dict]]
    run: Callable[[dict, torch.device | None, bool], tuple[dict, Any]]
    estimate_seconds: Callable[[dict], float]
    primary: tuple[Comparison, ...]
    default_seeds: tuple[int, ...]
    borrow_from: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.chapter}_{self.slug}"

    def results_path(self, root: Path | None = None) -> Path:
        return (root or project_root()) / RESULTS_FOLDER / f"{self.name}.jsonl"

    def configs(self, seeds: Sequence[int] | None = None, fast: bool = False) -> list[dict]:
        """The grid for ``seeds`` (default: ``default_seeds``), checked: JSON-able, no config twice."""
        configs = self.grid(tuple(self.default_seeds if seeds is None else seeds), fast)
        seen: dict[str, dict] = {}
        for config in configs:
            key = config_hash(config)
            if key in seen:
                raise ValueError(f"study {self.name}: the grid holds the same run twice: {config}")
            seen[key] = config
        return configs


def one_thread_run(runs: Callable[[dict], tuple[dict, Any]] | Mapping[str, Callable[[dict], tuple[dict, Any]]]) -> Callable:
    """A study's run function for small CPU models: ``runs(config)``, or ``runs[config["kind"]](config)`` for a
    mapping of kinds, on one torch thread
    (the thread count restored afterwards, also after an error); returns (metrics, the trained model when
    ``keep_model``, else None). ``device`` is accepted for the runner's interface and not used."""
    def run(config: dict, device: torch.device | None = None, keep_model: bool = False) -> tuple[dict, Any]:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            metrics, model = (runs[config["kind"]] if isinstance(runs, Mapping) else runs)(config)
        finally:
            torch.set_num_threads(threads)
        return metrics, model if keep_model else None

    return run


def read_rows(path: Path) -> list[dict]:
    """The finished runs of a results file (none when it does not exist). A torn last line (a run
    killed while its line was written) is left out; anything else unreadable is an error."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):   # the last line has no newline: written in part
                break
            raise ValueError(f"{path}, line {number}: not a JSON line ({err}); the file is damaged: restore "
                             f"it from git (git checkout -- {path.name}) or delete the line") from err
    return rows


def _cut_torn_tail(path: Path) -> None:
    """Cut a last line that was written in part (no newline at the end), so that appends stay whole."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def _append(path: Path, row: dict) -> None:
    """Append ``row`` as one line, whole: one write, flushed and synced before the next run starts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as file:
        file.write(json.dumps(row, separators=(",", ":"), allow_nan=False) + "\n")
        file.flush()
        os.fsync(file.fileno())


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores)"


def environment(device: torch.device) -> dict:
    """What a results line records about where it ran."""
    import peft
    import transformers

    import mtl_tutorial

    return {
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "peft": peft.__version__,
                     "mtl_tutorial": mtl_tutorial.__version__},
    }


def run_configs(
    study: Study,
    configs: Sequence[dict],
    device: torch.device | str | None = None,
    progress: bool = True,
    on_row: Callable[[dict], None] | None = None,
    skip: Callable[[dict], dict | None] | None = None,
    provenance: Mapping[str, Any] | None = None,
    keep_models: bool = False,
) -> list[dict]:
    """Run ``configs`` one after another; returns one row per config (in order).

    skip(config) -> a row to use instead of running (a finished run), or None; on_row(row) is called
    for every newly run row as soon as it is done. keep_models: each new row also holds its trained
    model under ``"model"`` (in memory only; for a chapter's live re-run). One progress bar, weighted by each run's
    estimated seconds, so its ETA counts slow runs as slow.
    """
    device = torch.device("cpu") if device is None else check_device(device)
    where = environment(device)
    provenance = dict(provenance or {"commit": None, "code_changed": None})
    rows: list[dict] = []
    estimates = [study.estimate_seconds(config) for config in configs]
    with tqdm(total=round(sum(estimates)), desc=f"study {study.name}", unit="est. s", disable=not progress) as bar:
        for config, estimate in zip(configs, estimates):
            found = skip(config) if skip else None
            if found is not None:
                rows.append(found)
                bar.update(round(estimate))
                continue
            bar.set_postfix_str(f"{config['label']}, seed {config['seed']}")
            start = time.perf_counter()
            metrics, model = study.run(config, device, keep_models)
            row = {"study": study.name, "config": config, "config_hash": config_hash(config), "metrics": metrics,
                   "seconds": round(time.perf_counter() - start, 2), **where, **provenance,
                   "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            if on_row:
                on_row(row)
            rows.append(row | ({"model": model} if keep_models else {}))
            bar.update(round(estimate))
    return rows


def dry_run_table(study: Study, configs: Sequence[dict], done: Mapping[str, dict], borrowable: set[str] = frozenset()) -> str:
    """The grid, what is finished (or can be borrowed from another study's file) and the estimated
    time of the rest (2-core CPU estimates)."""
    lines = [f"study {study.name}: {study.question}",
             f"{'run':<44}{'seed':>5}{'status':>10}{'est. s':>8}"]
    left, counts = 0.0, {"done": 0, "borrow": 0, "to run": 0}
    for config in configs:
        key = config_hash(config)
        status = "done" if key in done else "borrow" if key in borrowable else "to run"
        seconds = study.estimate_seconds(config)
        left += seconds if status == "to run" else 0
        counts[status] += 1
        lines.append(f"{config['label']:<44}{config['seed']:>5}{status:>10}{seconds:>8.0f}")
    lines.append(f"{len(configs)} runs, {counts['done']} done, {counts['borrow']} to borrow from "
                 f"{', '.join(study.borrow_from) or 'no other study'}, {counts['to run']} to run: about {left / 60:.0f} min "
                 f"on a 2-core CPU (a GPU takes a fraction of it)")
    return "\n".join(lines)


def run_study(
    study: Study,
    seeds: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    dry_run: bool = False,
    path: Path | None = None,
    progress: bool = True,
    allow_uncommitted: bool = False,
) -> list[dict]:
    """Run what ``study``'s results file lacks of its grid and append it; returns the grid's rows.

    dry_run: print the grid with what is done and the estimated time, run nothing (returns the rows
    already done). allow_uncommitted: run although the package has uncommitted changes (the lines
    then say ``"code_changed": true``; ``load_study`` warns about them).
    """
    path = path or study.results_path()
    configs = study.configs(seeds)
    _cut_torn_tail(path)
    done = {row["config_hash"]: row for row in read_rows(path)}
    if dry_run:
        borrowable = {row["config_hash"] for other in study.borrow_from for row in read_rows(path.with_name(f"{other}.jsonl"))}
        print(dry_run_table(study, configs, done, borrowable))
        return [done[config_hash(c)] for c in configs if config_hash(c) in done]
    provenance = code_provenance()
    if provenance["code_changed"] and not allow_uncommitted:
        raise RuntimeError(
            f"the package has uncommitted changes (git status mtl_tutorial pyproject.toml): commit them first, "
            f"so that {path.name} records the code that produced it, or pass --allow-uncommitted for a trial "
            f"run (its lines say code_changed: true)")

    def finished(config: dict) -> dict | None:
        key = config_hash(config)
        if key in done:
            return done[key]
        for other in study.borrow_from:
            for row in read_rows(path.with_name(f"{other}.jsonl")):
                if row["config_hash"] == key:
                    row = {**row, "study": study.name, "borrowed_from": f"{other}.jsonl"}
                    _append(path, row)
                    return row
        return None

    return run_configs(study, configs, device, progress, on_row=lambda row: _append(path, row), skip=finished,
                       provenance=provenance)


def history_from_row(row: Mapping[str, Any]) -> History:
    """The per-step training losses a row stored (``metrics["history"]``) as a ``History``."""
    stored = row["metrics"].get("history")
    if stored is None:
        raise ValueError(f"the run {row['config']['label']!r}, seed {row['config']['seed']} stored no history")
    tasks = tuple(stored["losses"])
    losses = {task: [math.nan if v is None else v for v in values] for task, values in stored["losses"].items()}
    return History(tasks, steps=list(stored["steps"]), losses=losses)


@dataclass
class StudyResults:
    """A study's results file, read back: ``rows`` in grid order."""

    study: Study
    rows: list[dict]
    path: Path | None   # None: run inline (``run_inline``), not read from a file

    def labels(self) -> list[str]:
        return list(dict.fromkeys(row["config"]["label"] for row in self.rows))

    def seeds(self) -> list[int]:
        return sorted({row["config"]["seed"] for row in self.rows})

    def select(self, label: str) -> list[dict]:
        """The rows of run ``label``, ordered by seed."""
        rows = sorted((row for row in self.rows if row["config"]["label"] == label), key=lambda r: r["config"]["seed"])
        if not rows:
            raise ValueError(f"no run labelled {label!r} in {self.path.name}; its runs are: {', '.join(self.labels())}")
        return rows

    def configs(self, labels: Iterable[str], seeds: Iterable[int]) -> list[dict]:
        """The configs of runs ``labels`` with ``seeds`` (for a live re-run with ``run_configs``)."""
        wanted = set(seeds)
        return [row["config"] for label in labels for row in self.select(label) if row["config"]["seed"] in wanted]

    def history(self, label: str, seed: int) -> History:
        """The training losses of run ``label`` with ``seed``."""
        rows = [row for row in self.select(label) if row["config"]["seed"] == seed]
        if not rows:
            raise ValueError(f"run {label!r} has no seed {seed}; its seeds are {self.seeds()}")
        return history_from_row(rows[0])

    def scores(self, labels: Iterable[str] | None = None, metric: str = "scores") -> dict[str, dict[str, list[float]]]:
        """{label: {task: [value per seed]}}: ``metrics[metric]`` of every run (for ``evidence``)."""
        return {label: _by_task([row["metrics"][metric] for row in self.select(label)])
                for label in (self.labels() if labels is None else labels)}

    def describe(self) -> str:
        """Where, on what and how long the study ran: one paragraph for a chapter to print."""
        minutes = sum(row["seconds"] for row in self.rows) / 60
        devices = sorted({f"{row['device']}, {row['threads']} torch thread{'s' if row['threads'] > 1 else ''}"
                          for row in self.rows})
        commits = sorted({(row["commit"] or "no git")[:10] for row in self.rows})
        versions = self.rows[0]["versions"]
        dates = sorted(row["date"][:10] for row in self.rows)
        changed = sum(bool(row.get("code_changed")) for row in self.rows)
        source = self.path.name if self.path else "run inline (fast mode's small grid, no file)"
        text = (f"{source}: {len(self.rows)} runs ({len(self.labels())} runs x {len(self.seeds())} seeds), "
                f"{minutes:.0f} min of compute on {'; '.join(devices)}; torch {versions['torch']}, transformers "
                f"{versions['transformers']}, peft {versions['peft']}; code at commit {', '.join(commits)}; "
                f"run {dates[0]}" + (f" to {dates[-1]}" if dates[-1] != dates[0] else ""))
        if changed:
            text += f"; WARNING: {changed} run(s) ran with uncommitted code changes"
        return text


def _by_task(per_seed: Sequence[Mapping[str, float]]) -> dict[str, list[float]]:
    return {task: [values[task] for values in per_seed] for task in per_seed[0]}


def load_study(study: Study, path: Path | None = None) -> StudyResults:
    """The committed results of ``study``'s grid (``default_seeds``). Runs of the grid missing from the
    file are an error that says how to run them; extra lines (other seeds, older configs) are ignored."""
    path = path or study.results_path()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run the study first (mtl-tutorial study {study.chapter}; "
                                f"--dry-run shows the grid and its time)")
    by_hash = {row["config_hash"]: row for row in read_rows(path)}
    configs = study.configs()
    missing = [c for c in configs if config_hash(c) not in by_hash]
    if missing:
        raise ValueError(f"{path.name} lacks {len(missing)} of the study's {len(configs)} runs (e.g. "
                         f"{missing[0]['label']!r}, seed {missing[0]['seed']}): run mtl-tutorial study "
                         f"{study.chapter} to finish it (it resumes)")
    return StudyResults(study, [by_hash[config_hash(c)] for c in configs], path)


def run_inline(study: Study, seeds: Sequence[int] = (0, 1), fast: bool = True, device: torch.device | str | None = None,
               progress: bool = True) -> StudyResults:
    """The study's grid run here and kept in memory (by default fast mode's small grid on two seeds, so
    that every interval and table of a chapter runs in CI); nothing is written."""
    return StudyResults(study, run_configs(study, study.configs(seeds, fast), device, progress), None)


def reproduction_verdict(study_rows: Sequence[Mapping], rerun_rows: Sequence[Mapping], tolerance: int = 1) -> str:
    """Do live re-runs reproduce the study? Compares each task's count of correct test answers
    (``metrics["correct"]``) of every re-run with the study's line of the same config.

    ``"reproduced 4 of 4 runs: every task's test accuracy within 1 test example of the study's"``,
    or the runs that did not, with their largest difference in test examples. The verdict depends
    only on the counts and ``tolerance``, so it reads the same on any machine whose runs agree.
    """
    by_hash = {row["config_hash"]: row for row in study_rows}
    off = []
    for row in rerun_rows:
        key = row["config_hash"]
        if key not in by_hash:
            raise ValueError(f"the re-run {row['config']['label']!r}, seed {row['config']['seed']} is not in the study "
                             f"(its config differs); re-run configs taken from the study's rows")
        ours, theirs = row["metrics"]["correct"], by_hash[key]["metrics"]["correct"]
        worst = max(abs(ours[task] - theirs[task]) for task in theirs)
        if worst > tolerance:
            off.append(f"{row['config']['label']}, seed {row['config']['seed']} (off by {worst} examples)")
    n = len(rerun_rows)
    unit = f"within {tolerance} test example{'s' if tolerance != 1 else ''}"
    if not off:
        return f"reproduced {n} of {n} runs: every task's test accuracy {unit} of the study's"
    return f"reproduced {n - len(off)} of {n} runs {unit}; not reproduced: " + "; ".join(off)
