"""The real text tasks shipped in ``data/``: two sources, two tasks on each source's texts.

| task        | source          | classes                                                   |
|-------------|-----------------|-----------------------------------------------------------|
| sentiment   | drug_reviews    | negative, neutral, positive (from the 1-10 rating)        |
| condition   | drug_reviews    | the 4 most frequent conditions + other                    |
| supersense  | wordnet_glosses | 11 WordNet lexicographer files (noun.animal, verb.motion) |
| pos         | wordnet_glosses | adjective, adverb, noun, verb                             |

Tasks of one source label the same texts, in the same order, for a given split: that is what
lets a multi-task model run one shared forward pass for both. ``data/DATA.md`` says where the
data come from, their licences and how ``data/build_text_tasks.py`` rebuilds them.
The ``data`` folder is found beside the package, or where ``MTL_TUTORIAL_DATA`` points.
"""

from __future__ import annotations

import csv
import difflib
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

SPLITS = ("train", "test")
# task -> the source whose texts it labels (and the CSV column that holds its labels)
TASK_SOURCES = {
    "sentiment": "drug_reviews",
    "condition": "drug_reviews",
    "supersense": "wordnet_glosses",
    "pos": "wordnet_glosses",
}
TASKS = tuple(sorted(TASK_SOURCES))


@dataclass(frozen=True)
class TextTask:
    """One classification task: ``labels[i]`` in ``range(num_classes)`` is the class of ``texts[i]``.

    texts: N strings; labels: (N,) int64; label_names: class names, ``label_names[labels[i]]``;
    source: the texts' origin; tasks with the same source and split share their texts.
    """

    name: str
    texts: list[str]
    labels: torch.Tensor
    label_names: list[str]
    source: str

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def __len__(self) -> int:
        return len(self.texts)


def data_dir() -> Path:
    """The folder of the shipped data files: ``MTL_TUTORIAL_DATA`` if set, else the repo's data/."""
    override = os.environ.get("MTL_TUTORIAL_DATA", "").strip()
    return Path(override) if override else Path(__file__).resolve().parents[2] / "data"


def data_file(source: str, split: str) -> Path:
    """Path of one source's split file, e.g. ``data/drug_reviews_train.csv``."""
    return data_dir() / f"{source}_{split}.csv"


def tasks_sharing_inputs() -> dict[str, list[str]]:
    """Source -> the tasks that label its texts: ``{'drug_reviews': ['condition', 'sentiment'], ...}``."""
    groups: dict[str, list[str]] = {}
    for task in TASKS:
        groups.setdefault(TASK_SOURCES[task], []).append(task)
    return groups


def _read_rows(source: str, split: str) -> list[dict[str, str]]:
    path = data_file(source, split)
    if not path.is_file():
        raise FileNotFoundError(
            f"data file {path} is missing. Rebuild the shipped data with "
            f"`python data/build_text_tasks.py --download` in the course folder, or set "
            f"MTL_TUTORIAL_DATA to the folder that holds {path.name}"
        )
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _label_names(source: str, task: str) -> list[str]:
    """Classes of a task as seen in both splits, sorted, with ``other`` last (same ids in both)."""
    names = {row[task] for split in SPLITS for row in _read_rows(source, split)}
    return sorted(names, key=lambda name: (name == "other", name))


def _check_task_names(tasks: str | Iterable[str] | None) -> list[str]:
    if tasks is None:
        return list(TASKS)
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    for name in names:
        if name not in TASK_SOURCES:
            close = difflib.get_close_matches(str(name).lower(), TASKS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"unknown task {name!r}{hint}; tasks are: {', '.join(TASKS)}")
    return names


def _stratified_subset(strata: list[tuple[str, ...]], size: int, seed: int) -> list[int]:
    """``size`` row indices, sorted, with every stratum kept in proportion (systematic sampling).

    Each stratum's rows are shuffled with ``seed``; row r of a stratum of n rows gets the key
    (r + 0.5) / n, and the ``size`` smallest keys win, so every stratum contributes about
    ``size * n / N`` rows.
    """
    rng = random.Random(seed)
    by_stratum: dict[tuple[str, ...], list[int]] = {}
    for index, stratum in enumerate(strata):
        by_stratum.setdefault(stratum, []).append(index)
    keyed = []
    for stratum in sorted(by_stratum):
        rows = by_stratum[stratum]
        rng.shuffle(rows)
        keyed += [((rank + 0.5) / len(rows), stratum, index) for rank, index in enumerate(rows)]
    return sorted(index for _, _, index in sorted(keyed)[:size])


def load_text_tasks(
    tasks: str | Iterable[str] | None = None,
    split: str = "train",
    max_per_task: int | None = None,
    seed: int = 0,
) -> dict[str, TextTask]:
    """The shipped tasks by name: ``load_text_tasks(["sentiment", "pos"], split="test")``.

    tasks: names (default: all of ``TASKS``); split: ``"train"`` or ``"test"``.
    max_per_task: keep at most this many examples per task, a deterministic subset (``seed``)
    stratified on all the source's labels; tasks of one source keep the same rows, so they still
    share their texts.
    """
    names = _check_task_names(tasks)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits are: {', '.join(SPLITS)}")
    if max_per_task is not None and (
        not isinstance(max_per_task, int) or isinstance(max_per_task, bool) or max_per_task < 1
    ):
        raise ValueError(f"max_per_task must be a positive int or None, got {max_per_task!r}")
    loaded: dict[str, TextTask] = {}
    for source, source_tasks in tasks_sharing_inputs().items():
        wanted = [task for task in source_tasks if task in names]
        if not wanted:
            continue
        rows = _read_rows(source, split)
        if max_per_task is not None and max_per_task < len(rows):
            strata = [tuple(row[task] for task in source_tasks) for row in rows]
            rows = [rows[i] for i in _stratified_subset(strata, max_per_task, seed)]
        texts = [row["text"] for row in rows]
        for task in wanted:
            label_names = _label_names(source, task)
            index = {name: i for i, name in enumerate(label_names)}
            labels = torch.tensor([index[row[task]] for row in rows], dtype=torch.long)
            loaded[task] = TextTask(task, texts, labels, label_names, source)
    return {name: loaded[name] for name in names}


def task_summary() -> list[tuple[str, int, int, int]]:
    """(task, train size, test size, number of classes) for every shipped task, for ``doctor``."""
    train, test = load_text_tasks(split="train"), load_text_tasks(split="test")
    return [(name, len(train[name]), len(test[name]), train[name].num_classes) for name in TASKS]
