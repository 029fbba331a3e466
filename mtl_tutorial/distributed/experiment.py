"""The experiment of ``python -m mtl_tutorial.distributed``: correlated synthetic tasks on a shared trunk.

Apart from the collectives (``mtl_tutorial.distributed``) and from the entry point
(``distributed/__main__.py``), so that the benchmarks and tests can build the same model and data
without the command line, and the collectives import neither the data nor the loop.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from mtl_tutorial.data import make_correlated_tasks
from mtl_tutorial.models import HardSharingModel, mlp
from mtl_tutorial.runtime import seed_everything


def correlated_tasks_setup(
    num_tasks: int = 2,
    correlation: float = 0.5,
    num_train: int = 2048,
    num_test: int = 512,
    hidden: Sequence[int] = (64,),
    seed: int = 0,
) -> tuple[HardSharingModel, dict, dict, dict]:
    """The entry point's experiment: (model, train_data, test_data, loss_fns).

    Chapter 01's correlated regression tasks (``make_correlated_tasks``, inputs (N, 100)) on a
    chapter-02 model: a shared ``mlp(100, *hidden)`` trunk and one linear head per task, MSE losses.
    Data: task ``"task1"``, ... -> (x (N, 100), y_t (N,)), the tasks sharing their inputs. Same seed,
    same model and data on every rank.
    """
    data = make_correlated_tasks(num_train + num_test, num_tasks=num_tasks, correlation=correlation, seed=seed)
    tasks = [f"task{t + 1}" for t in range(num_tasks)]
    train_data = {task: (data.x[:num_train], data.y[:num_train, t]) for t, task in enumerate(tasks)}
    test_data = {task: (data.x[num_train:], data.y[num_train:, t]) for t, task in enumerate(tasks)}
    seed_everything(seed)
    heads = {task: nn.Sequential(nn.Linear(hidden[-1], 1), nn.Flatten(0)) for task in tasks}
    model = HardSharingModel(mlp(data.x.shape[1], *hidden), heads)
    return model, train_data, test_data, {task: nn.functional.mse_loss for task in tasks}
