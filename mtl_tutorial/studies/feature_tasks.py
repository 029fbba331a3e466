"""The four shipped text tasks on cached frozen MiniLM features: the data that the studies of chapters
02-06 and 11 train their small models on (heads, trunks and towers on top of the frozen backbone).

``feature_data`` loads and encodes them once per process; ``validation_split`` carves a stratified
validation set out of a training split (tuning and early stopping never look at the test split).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from mtl_tutorial.data import load_text_tasks
from mtl_tutorial.features import frozen_features

TASKS = ("sentiment", "condition", "supersense", "pos")


@functools.lru_cache(maxsize=2)
def feature_data(max_per_task: int | None) -> tuple[dict, dict, dict]:
    """(train, test, num_classes) of the four shipped tasks: task -> (frozen MiniLM features (N, 384), labels (N,))."""
    splits = [load_text_tasks(list(TASKS), split=split, max_per_task=max_per_task, seed=0) for split in ("train", "test")]
    train_data, test_data = ({name: (frozen_features(task.texts, progress=False), task.labels) for name, task in s.items()}
                             for s in splits)
    return train_data, test_data, {name: task.num_classes for name, task in splits[0].items()}


def validation_split(labels: torch.Tensor, share: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(pool, validation) indices of ``labels`` (N,): ``share`` of every class (at least one example,
    and at least one left in the pool) goes to validation, drawn with ``seed``; the rest is the pool
    that training (or support sets) draws from."""
    if not 0 < share < 1:
        raise ValueError(f"share must be strictly between 0 and 1 (the fraction held out for validation), got {share!r}")
    labels = torch.as_tensor(labels)
    rng = np.random.default_rng(seed)
    pool, validation = [], []
    for c in torch.unique(labels).tolist():
        members = rng.permutation(torch.nonzero(labels == c).flatten().numpy())
        if len(members) < 2:
            raise ValueError(f"class {c} has {len(members)} example(s); a validation split needs at least 2 per class")
        cut = min(len(members) - 1, max(1, round(share * len(members))))
        validation.append(members[:cut])
        pool.append(members[cut:])
    return torch.from_numpy(np.sort(np.concatenate(pool))), torch.from_numpy(np.sort(np.concatenate(validation)))
