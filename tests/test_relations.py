"""Lookahead task affinity (Fifty et al. 2021), its tracker inside train(), and the seed interval."""

import numpy as np
import pytest
import torch
from torch import nn

from mtl_tutorial.aggregation import gradient_cosines
from mtl_tutorial.data import MultiTaskDataset, multitask_loader
from mtl_tutorial.models import HardSharingModel
from mtl_tutorial.relations import (
    TaskAffinity,
    affinity_matrix,
    affinity_metric_name,
    lookahead_affinity,
)
from mtl_tutorial.training import train

MSE = nn.functional.mse_loss


def linear_tasks(directions):
    """Linear regression tasks y_t = x·w_t on one shared linear trunk (convex in the trunk for fixed heads)."""
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    model = HardSharingModel(nn.Linear(3, 1, bias=False), {t: nn.Flatten(0) for t in directions})
    with torch.no_grad():
        model.trunk.weight.zero_()
    batches = {t: (x, x @ torch.tensor(w)) for t, w in directions.items()}
    return model, batches


def test_a_step_on_a_task_lowers_its_own_loss_on_a_convex_toy():
    model, batches = linear_tasks({"a": [1.0, 0.0, 0.0], "b": [0.0, 1.0, 0.0]})
    affinity, _ = lookahead_affinity(model, batches, {"a": MSE, "b": MSE}, lr=0.05)
    assert affinity[0, 0] > 0 and affinity[1, 1] > 0


def test_affinity_is_one_minus_the_loss_ratio_after_a_sgd_step_on_the_other_task():
    model, batches = linear_tasks({"a": [1.0, 0.0, 0.0], "b": [-1.0, 0.0, 0.0], "c": [1.0, 1.0, 0.0]})
    loss_fns = dict.fromkeys("abc", MSE)
    affinity, cosines = lookahead_affinity(model, batches, loss_fns, lr=0.05)
    # by hand: step θ on task a, then measure b's loss before and after
    x, y_a = batches["a"]
    theta = torch.zeros(1, 3, requires_grad=True)
    grad_a = torch.autograd.grad(MSE((x @ theta.T).flatten(), y_a), theta)[0]
    _, y_b = batches["b"]
    before = MSE((x @ theta.T).flatten(), y_b)
    after = MSE((x @ (theta - 0.05 * grad_a).T).flatten(), y_b)
    assert affinity[0, 1].item() == pytest.approx(1 - (after / before).item(), rel=1e-5)
    assert affinity[0, 1] < 0 < affinity[0, 2]  # opposite target hurts, overlapping one helps
    assert cosines[0, 1].item() == pytest.approx(-1.0, abs=1e-6) and cosines[0, 2] > 0
    torch.testing.assert_close(model.trunk.weight, torch.zeros(1, 3))  # the lookahead changed nothing


def test_cosines_are_those_of_aggregation_on_the_shared_gradients():
    model, batches = linear_tasks({"a": [1.0, 0.5, 0.0], "b": [0.0, 1.0, 2.0]})
    _, cosines = lookahead_affinity(model, batches, {"a": MSE, "b": MSE}, lr=0.1)
    grads = []
    for task, (x, y) in batches.items():
        model.zero_grad()
        MSE(model(x, task), y).backward()
        grads.append(model.trunk.weight.grad.flatten().clone())
    torch.testing.assert_close(cosines, gradient_cosines(torch.stack(grads)))


def test_affinity_errors_say_what_to_do():
    model, batches = linear_tasks({"a": [1.0, 0.0, 0.0], "b": [0.0, 1.0, 0.0]})
    with pytest.raises(ValueError, match="no trainable parameter starts with 'heads.'.*Trainable parameters: trunk.weight"):
        lookahead_affinity(model, batches, {"a": MSE, "b": MSE}, lr=0.1, shared="heads.")
    with pytest.raises(ValueError, match="no loss function for task"):
        lookahead_affinity(model, batches, {"a": MSE}, lr=0.1)
    with pytest.raises(ValueError, match="at least 2 tasks"):
        lookahead_affinity(model, {"a": batches["a"]}, {"a": MSE}, lr=0.1)
    with pytest.raises(ValueError, match="must be > 0"):
        lookahead_affinity(model, batches, {"a": MSE, "b": MSE}, lr=0.0)


def test_task_affinity_records_in_history_through_train_and_averages():
    torch.manual_seed(0)
    x = torch.randn(40, 3)
    data = {"a": (x, x[:, 0]), "b": (x, -x[:, 0])}
    model = HardSharingModel(nn.Linear(3, 1), {"a": nn.Flatten(0), "b": nn.Flatten(0)})
    loss_fns = {"a": MSE, "b": MSE}
    loader = multitask_loader(MultiTaskDataset(data), batch_size=16, mixed=True)
    tracker = TaskAffinity(data, loss_fns, lr=0.05, batch_size=16)
    history = train(model, loader, loss_fns, num_steps=4, eval_fn=tracker, eval_every=2, progress=False)
    assert history.eval_steps == [2, 4]
    values = history.metrics[affinity_metric_name("affinity", "a", "b")]
    assert len(values) == 2
    matrix = affinity_matrix(history, ["a", "b"])
    assert matrix.shape == (2, 2) and matrix[0, 1] == pytest.approx(np.mean(values))
    assert affinity_matrix(history, ["a", "b"], kind="cosine")[0, 1] < 0 < matrix[0, 0]  # opposite targets
    with pytest.raises(ValueError, match="train with eval_fn=TaskAffinity"):
        affinity_matrix(history, ["a", "c"])
