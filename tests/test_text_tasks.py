"""The shipped text tasks: files match data/DATA.md, loaders, splits without leakage, errors."""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from mtl_tutorial.data import TASK_SOURCES, TASKS, load_text_tasks, task_summary, tasks_sharing_inputs
from mtl_tutorial.data.text_tasks import data_dir

DATA_MD = Path(__file__).resolve().parents[1] / "data" / "DATA.md"


def _table(header: str) -> list[list[str]]:
    """The rows of the DATA.md table whose header line is ``header`` (cells stripped)."""
    lines = DATA_MD.read_text(encoding="utf-8").splitlines()
    start = lines.index(header) + 2  # skip the header and its |---| line
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


FILES = _table("| file | rows | sha256 |")
CLASS_COUNTS = _table("| task | class | train | test |")


def test_data_md_lists_every_file_and_task() -> None:
    assert {row[0] for row in FILES} == {
        f"{source}_{split}.csv" for source in set(TASK_SOURCES.values()) for split in ("train", "test")
    }
    assert {row[0] for row in CLASS_COUNTS} == set(TASKS)


@pytest.mark.parametrize(("name", "rows", "sha256"), FILES)
def test_files_match_their_checksums_and_row_counts(name: str, rows: str, sha256: str) -> None:
    path = data_dir() / name
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256, f"{name} changed; see DATA.md"
    assert len(path.read_text(encoding="utf-8").splitlines()) == int(rows) + 1  # + header


@pytest.mark.parametrize("split", ["train", "test"])
def test_class_counts_match_data_md(split: str) -> None:
    tasks = load_text_tasks(split=split)
    column = 2 if split == "train" else 3
    for name, task in tasks.items():
        expected = {row[1]: int(row[column]) for row in CLASS_COUNTS if row[0] == name}
        counts = Counter(task.label_names[i] for i in task.labels.tolist())
        assert dict(counts) == expected, name


def test_tasks_have_texts_labels_and_names() -> None:
    tasks = load_text_tasks()
    assert list(tasks) == list(TASKS) and len(tasks) >= 4
    expected_classes = {"sentiment": 3, "condition": 5, "supersense": 11, "pos": 4}
    for name, task in tasks.items():
        assert task.name == name and task.source == TASK_SOURCES[name]
        assert task.labels.dtype == torch.long and task.labels.shape == (len(task.texts),)
        assert task.num_classes == expected_classes[name] == len(set(task.label_names))
        # every class occurs, and no label points outside label_names
        assert set(task.labels.tolist()) == set(range(task.num_classes))
        assert all(isinstance(t, str) and t.strip() == t and t for t in task.texts)
    assert tasks["sentiment"].label_names == ["negative", "neutral", "positive"]
    assert tasks["pos"].label_names == ["adjective", "adverb", "noun", "verb"]
    assert tasks["condition"].label_names[-1] == "other"


def test_text_cleaning_removed_entities_and_wrapping_quotes() -> None:
    tasks = [load_text_tasks("sentiment", split)["sentiment"] for split in ("train", "test")]
    texts = [text for task in tasks for text in task.texts]
    assert not any("&#039;" in t or "&quot;" in t or "&amp;" in t for t in texts)
    assert not any(t.startswith('"') and t.endswith('"') for t in texts)
    assert not any("  " in t or "\n" in t for t in texts)


def test_tasks_of_one_source_share_texts_and_label_ids_across_splits() -> None:
    assert tasks_sharing_inputs() == {
        "drug_reviews": ["condition", "sentiment"],
        "wordnet_glosses": ["pos", "supersense"],
    }
    for split in ("train", "test"):
        tasks = load_text_tasks(split=split)
        for names in tasks_sharing_inputs().values():
            assert tasks[names[0]].texts == tasks[names[1]].texts
    train, test = load_text_tasks(split="train"), load_text_tasks(split="test")
    assert all(train[name].label_names == test[name].label_names for name in TASKS)


def test_pos_is_the_part_of_speech_of_the_supersense() -> None:
    tasks = load_text_tasks(["supersense", "pos"])
    file_pos = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}
    for sense, pos in zip(tasks["supersense"].labels.tolist(), tasks["pos"].labels.tolist()):
        lexname = tasks["supersense"].label_names[sense]
        assert tasks["pos"].label_names[pos] == file_pos[lexname.split(".")[0]]


@pytest.mark.parametrize("source", sorted(set(TASK_SOURCES.values())))
def test_no_text_in_both_splits_and_no_duplicates(source: str) -> None:
    task = tasks_sharing_inputs()[source][0]
    train = load_text_tasks(task, "train")[task].texts
    test = load_text_tasks(task, "test")[task].texts
    assert len(set(train)) == len(train) and len(set(test)) == len(test)
    assert not set(train) & set(test)


def test_task_summary_for_doctor() -> None:
    assert task_summary() == [
        ("condition", 592, 372, 5),
        ("pos", 2200, 550, 4),
        ("sentiment", 592, 372, 3),
        ("supersense", 2200, 550, 11),
    ]


def test_max_per_task_is_a_deterministic_stratified_subset_shared_by_a_source() -> None:
    full = load_text_tasks(split="train")
    small = load_text_tasks(split="train", max_per_task=110)
    again = load_text_tasks(split="train", max_per_task=110)
    other_seed = load_text_tasks(split="train", max_per_task=110, seed=1)
    for name, task in small.items():
        assert len(task) == 110
        assert task.texts == again[name].texts and torch.equal(task.labels, again[name].labels)
        assert task.texts != other_seed[name].texts
        assert task.label_names == full[name].label_names
        assert set(task.texts) <= set(full[name].texts)
    assert small["sentiment"].texts == small["condition"].texts
    # supersense is balanced (200 per class of 11): a stratified subset of 110 keeps 10 per class
    assert torch.bincount(small["supersense"].labels).tolist() == [10] * 11
    # sentiment 159/54/379 of 592 -> about 29.5/10.0/70.4 of 110
    counts = torch.bincount(small["sentiment"].labels).tolist()
    assert all(abs(c - e) <= 1.5 for c, e in zip(counts, [29.5, 10.0, 70.4]))
    assert len(load_text_tasks("pos", max_per_task=10**6)["pos"]) == 2200


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tasks": "sentimnet"}, "unknown task 'sentimnet' \\(did you mean 'sentiment'\\?\\); "
                                 "tasks are: condition, pos, sentiment, supersense"),
        ({"tasks": ["pos", "POS"]}, "did you mean 'pos'"),
        ({"tasks": ["nothing_alike"]}, "unknown task 'nothing_alike'; tasks are"),
        ({"split": "validation"}, "unknown split 'validation'; splits are: train, test"),
        ({"max_per_task": 0}, "max_per_task must be a positive int"),
        ({"max_per_task": 2.5}, "max_per_task must be a positive int"),
        ({"max_per_task": True}, "max_per_task must be a positive int"),
    ],
)
def test_bad_arguments_raise_with_a_hint(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_text_tasks(**kwargs)


def test_data_folder_override_and_missing_file_message(tmp_path: Path, monkeypatch) -> None:
    for name in ("wordnet_glosses_train.csv", "wordnet_glosses_test.csv"):
        shutil.copy(data_dir() / name, tmp_path / name)
    monkeypatch.setenv("MTL_TUTORIAL_DATA", str(tmp_path))
    assert data_dir() == tmp_path
    assert len(load_text_tasks("pos")["pos"]) == 2200
    with pytest.raises(FileNotFoundError, match="drug_reviews_train.csv is missing.*build_text_tasks"):
        load_text_tasks("sentiment")
