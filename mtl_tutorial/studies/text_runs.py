"""One run of a PEFT method on the shipped text tasks, as a study config and its metrics.

Chapters 07 and 10 study the same kind of run: heads (and whatever the method adds inside the
frozen backbone) trained on mixed-task batches of the WordNet tasks for whole epochs, then scored
on the complete test sets. ``text_config`` writes such a run down as a JSON-able config and
``run_text_config`` trains it with ``showdown.run_method`` (the one home of the training recipe) and
returns what a results line stores:

- ``scores[task]`` (test accuracy), ``correct[task]`` and ``test_examples[task]`` (counts, for the
  reproduction check), ``majority[task]`` (the training majority class on the test labels);
- ``trainable_parameters``, ``task_file_bytes[task]``, ``step_seconds`` (median), ``peak_memory_bytes``;
- ``history``: the per-step training loss of each task (None where a batch held no example of it);
- prefix-tuning only, ``prefix_steps``: how far each task's prefix moved per step (``prefix.PrefixStepRecorder``).

Both studies use full-length glosses (``FULL_LENGTH`` tokens: the longest gloss has 70) and the same
step sizes, so a run of one study is the same config as in the other and is borrowed, not rerun.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
from torch import nn

from mtl_tutorial.backbone import load_backbone
from mtl_tutorial.data import MultiTaskDataset, load_text_tasks, multitask_loader
from mtl_tutorial.showdown import BOTTLENECK_SIZE, HEAD_LR, ShowdownRow, body_lr_of, first_training_batch, run_method
from mtl_tutorial.studies.runner import history_from_row
from mtl_tutorial.training import majority_class_accuracy

WORDNET_TASKS = ("supersense", "pos")  # both label the same WordNet glosses (chapter 00)
FULL_LENGTH = 128  # tokens per text: no WordNet gloss is cut (the longest has 70)
FAST_SIZE = {"train_examples": 24, "test_examples": 16, "max_length": 32, "batch_size": 8}  # a study's fast-mode grid
ADAPTER_METHODS = ("Houlsby adapters", "Pfeiffer adapters", "adapters after the encoder (article)")
RUN_OPTIONS = ("activation", "adapter_layers", "lora_targets", "projection_hidden", "prefix_layers", "prefix_words",
               "position_offset", "num_virtual_tokens")   # ``run_method``'s settings a config records only when given


def text_config(label: str, method: str, seed: int, *, tasks: Sequence[str] = WORDNET_TASKS, epochs: float = 1.0,
                batch_size: int = 16, max_length: int = FULL_LENGTH, train_examples: int | None = None,
                test_examples: int | None = None, bottleneck_size: int = BOTTLENECK_SIZE, body_lr: float | None = None,
                **extra) -> dict:
    """A run as a config: everything that decides its result (and ``label``, its display name).

    train_examples, test_examples: per task (None: all shipped). epochs: passes over the training
    examples of all tasks together, in mixed batches. bottleneck_size is kept for adapter methods only.
    body_lr: Adam's step size inside the backbone (None: the method's customary ``BODY_LR``).
    extra: further settings, recorded only when given (so that older configs keep their hashes):
    ``activation`` and ``adapter_layers`` of per-task adapters, ``lora_targets`` of LoRA, ``merges``
    (chapter 10), ``projection_hidden``, ``prefix_layers``, ``prefix_words`` and ``position_offset`` of
    prefix-tuning, ``num_virtual_tokens`` of prefix- and prompt tuning (chapter 09; ``showdown.build_model``).
    """
    customary = body_lr_of(method)   # checks the method's name
    body_lr = customary if body_lr is None else body_lr
    if customary is None and body_lr is not None:
        raise ValueError(f"{method!r} trains nothing inside the backbone: leave body_lr None (got {body_lr!r})")
    if body_lr is not None and not body_lr > 0:
        raise ValueError(f"body_lr must be > 0, got {body_lr!r}")
    if not epochs > 0:
        raise ValueError(f"epochs must be > 0, got {epochs!r}")
    return {"label": label, "method": method, "seed": seed, "tasks": list(tasks), "epochs": epochs,
            "batch_size": batch_size, "max_length": max_length, "train_examples": train_examples,
            "test_examples": test_examples, "head_lr": HEAD_LR, "body_lr": body_lr,
            "bottleneck_size": bottleneck_size if method in ADAPTER_METHODS else None, **extra}


@functools.lru_cache(maxsize=1)
def _backbone():
    return load_backbone()


@functools.lru_cache(maxsize=4)
def _tasks(tasks: tuple[str, ...], train_examples: int | None, test_examples: int | None):
    """(train, test) task data; the subsets (when smaller than all) are drawn with seed 0 for every run."""
    return (load_text_tasks(list(tasks), split="train", max_per_task=train_examples, seed=0),
            load_text_tasks(list(tasks), split="test", max_per_task=test_examples, seed=0))


def task_data(config: dict):
    """(train, test): ``config``'s tasks as ``load_text_tasks`` gives them (loaded once per process)."""
    return _tasks(tuple(config["tasks"]), config["train_examples"], config["test_examples"])


def steps_for(config: dict) -> int:
    """Training steps of ``config``: its epochs times the batches in one pass over all tasks' examples."""
    train_tasks, _ = task_data(config)
    data = MultiTaskDataset({task: (train_tasks[task].texts, train_tasks[task].labels) for task in config["tasks"]})
    per_epoch = len(multitask_loader(data, config["batch_size"], mixed=True, seed=0))
    return max(1, round(config["epochs"] * per_epoch))


def first_batch_tokens(config: dict) -> int:
    """Tokens (padding included) of ``config``'s first training batch: the batch its run measured the peak
    memory of a step on (``metrics["peak_memory_bytes"]``), so that memory can be read per token."""
    train_tasks, _ = task_data(config)
    data = MultiTaskDataset({task: (list(train_tasks[task].texts), train_tasks[task].labels) for task in config["tasks"]})
    texts = list(first_training_batch(data, config["batch_size"], config["seed"]).inputs)
    _, tokenizer = _backbone()
    return tokenizer(texts, padding=True, truncation=True, max_length=config["max_length"],
                     return_tensors="pt")["input_ids"].numel()


def train_text_config(config: dict, device: torch.device | None = None, keep_model: bool = False) -> tuple[dict, ShowdownRow]:
    """Train and test ``config``; returns (metrics for the results line, the ``ShowdownRow``)."""
    backbone, tokenizer = _backbone()
    train_tasks, test_tasks = task_data(config)
    row = run_method(config["method"], config["seed"], backbone, tokenizer, train_tasks, test_tasks,
                     num_steps=steps_for(config), batch_size=config["batch_size"], max_length=config["max_length"],
                     keep_model=keep_model, bottleneck_size=config["bottleneck_size"] or BOTTLENECK_SIZE,
                     device=device, head_lr=config["head_lr"], body_lr=config["body_lr"],
                     **{name: config[name] for name in RUN_OPTIONS if name in config})   # absent: run_method's default
    test_examples = {task: len(test_tasks[task]) for task in config["tasks"]}
    history = row.history
    metrics = {
        "scores": row.scores,
        "correct": {task: round(row.scores[task] * n) for task, n in test_examples.items()},
        "test_examples": test_examples,
        "majority": {task: majority_class_accuracy(train_tasks[task].labels, test_tasks[task].labels)
                     for task in config["tasks"]},
        "num_steps": len(history.steps),
        "trainable_parameters": row.trainable_parameters,
        "backbone_parameters": row.backbone_parameters,
        "task_file_bytes": row.task_file_bytes,
        "step_seconds": row.step_seconds,
        "peak_memory_bytes": row.peak_memory_bytes,
        "memory_measure": row.memory_measure,
        **({"prefix_steps": row.prefix_steps} if row.prefix_steps is not None else {}),
        "history": {"steps": history.steps,
                    "losses": {task: [None if math.isnan(v) else round(v, 4) for v in values]
                               for task, values in history.losses.items()}},
    }
    return metrics, row


def run_text_config(config: dict, device: torch.device | None = None, keep_model: bool = False) -> tuple[dict, nn.Module | None]:
    """A study's run function: (metrics, the trained model when ``keep_model``)."""
    metrics, row = train_text_config(config, device, keep_model)
    return metrics, row.model


# seconds per training step on a quiet 2-core CPU (2 torch threads), full-length glosses, batches of 16
_STEP_SECONDS = {"frozen features": 0.004, "full fine-tuning": 0.33, "Houlsby adapters": 0.25,
                 "adapters after the encoder (article)": 0.08, "prefix-tuning": 0.35}


def estimate_text_seconds(config: dict) -> float:
    """A run's time on a 2-core CPU: its steps at the method's measured step time, plus ~10 s of testing."""
    per_step = _STEP_SECONDS.get(config["method"], 0.2)
    total_train = (config["train_examples"] or 2200) * len(config["tasks"])
    steps = config["epochs"] * math.ceil(total_train / config["batch_size"])
    return steps * per_step * (config["max_length"] / FULL_LENGTH) ** 0.3 + 10


def showdown_rows(rows: Sequence[dict]) -> list[ShowdownRow]:
    """Study rows (results lines, or ``run_configs`` rows) as ``ShowdownRow`` s named by their labels,
    for ``showdown.showdown_table`` and ``plotting.plot_score_vs_parameters``; a kept model comes along."""
    fields = ("scores", "trainable_parameters", "backbone_parameters", "task_file_bytes", "step_seconds",
              "peak_memory_bytes", "memory_measure")
    return [ShowdownRow(method=row["config"]["label"], seed=row["config"]["seed"],
                        **{name: row["metrics"][name] for name in fields},
                        history=history_from_row(row), model=row.get("model")) for row in rows]
