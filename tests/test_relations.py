"""Lookahead task affinity (Fifty et al. 2021), its tracker inside train(), and the seed interval."""

import copy

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
from mtl_tutorial.training import History, train

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


def test_task_affinity_takes_list_pairs_as_pairs_and_draws_from_every_example():
    model, batches = linear_tasks({"a": [1.0, 0.0, 0.0], "b": [0.0, 1.0, 0.0]})
    tracker = TaskAffinity({t: list(pair) for t, pair in batches.items()}, {"a": MSE, "b": MSE}, lr=0.1, batch_size=8)
    assert tracker.sizes == {"a": 64, "b": 64}  # a list [x, y] was read as a dataset of 2 examples
    assert len(tracker(model)) == 8


def zero_loss_batches():
    model, batches = linear_tasks({"a": [1.0, 0.0, 0.0], "b": [0.0, 1.0, 0.0]})
    return model, {t: (x, torch.zeros(len(x))) for t, (x, _) in batches.items()}  # the zero trunk fits y = 0 exactly


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda m, b: lookahead_affinity(m, b, {"a": MSE, "b": MSE}, lr="0.1"),
         TypeError, r"lr \(the lookahead step η\) must be a number, got str"),
        (lambda m, b: lookahead_affinity(m, b, {"a": MSE, "b": MSE}, lr=True), TypeError, "must be a number, got bool"),
        (lambda m, b: lookahead_affinity(m, b, {"a": MSE, "b": MSE}, lr=float("inf")),
         ValueError, "must be > 0, got inf"),
        (lambda m, b: lookahead_affinity(m, b, MSE, lr=0.1),
         TypeError, r"loss_fns must be a dict task -> loss function, got function; e.g. dict.fromkeys"),
        (lambda m, b: lookahead_affinity(m, b, {"a": MSE, "b": "mse"}, lr=0.1),
         TypeError, "the loss of task 'b' must be a function"),
        (lambda m, b: lookahead_affinity(m, list(b.values()), {"a": MSE, "b": MSE}, lr=0.1),
         TypeError, "batches must be a dict task -> \\(inputs, targets\\), got list"),
        (lambda m, b: lookahead_affinity(m, {t: x for t, (x, _) in b.items()}, {"a": MSE, "b": MSE}, lr=0.1), TypeError,
         r"batches\['a'\] must be an \(inputs, targets\) pair, got Tensor"),
        (lambda m, b: lookahead_affinity(m, {t: (x[:0], y[:0]) for t, (x, y) in b.items()}, {"a": MSE, "b": MSE}, lr=0.1), ValueError,
         "task 'a' has no examples"),
        (lambda m, b: lookahead_affinity(m, b, {"a": lambda o, y: (o - y) ** 2, "b": MSE}, lr=0.1), ValueError,
         "loss of task 'a' must be a 0-dim tensor, got \\(64,\\); reduce it first"),
        (lambda m, b: lookahead_affinity(*zero_loss_batches(), {"a": MSE, "b": MSE}, lr=0.1), ValueError,
         r"the loss of task 'a' is 0.0 on this batch, so Z_\(i→a\) = 1 − L_after / L_before is undefined"),
        (lambda m, b: lookahead_affinity(m, b, {"a": MSE, "b": MSE}, lr=0.1, shared=""), ValueError,
         "an empty prefix would count every parameter, heads included, as shared"),
        (lambda m, b: lookahead_affinity(m, b, {"a": MSE, "b": MSE}, lr=0.1, shared=[]),
         ValueError, "non-empty prefixes, got \\[\\]"),
        (lambda m, b: lookahead_affinity(m, b, {"a": MSE, "b": MSE}, lr=0.1, shared=[0]),
         TypeError, "shared must be a parameter-name prefix"),
        (lambda m, b: TaskAffinity(b, {"a": MSE, "b": MSE}, lr=0.1, batch_size=0),
         ValueError, "batch_size must be a positive int, got 0"),
        (lambda m, b: TaskAffinity(b, {"a": MSE, "b": MSE}, lr=0.1, batch_size=True),
         ValueError, "batch_size must be a positive int, got True"),
        (lambda m, b: TaskAffinity(b, {"a": MSE, "b": MSE}, lr=-1.0),
         ValueError, r"lr \(the lookahead step η\) must be > 0, got -1.0"),
        (lambda m, b: TaskAffinity(b, {"a": MSE}, lr=0.1),
         ValueError, "no loss function for task\\(s\\) b; loss_fns has: a"),
        (lambda m, b: TaskAffinity({"a": b["a"]}, {"a": MSE}, lr=0.1),
         ValueError, "affinity relates at least 2 tasks, got 1: a"),
        (lambda m, b: TaskAffinity(b, {"a": MSE, "b": MSE}, lr=0.1, seed=0.5),
         TypeError, "seed must be an int, got float"),
        (lambda m, b: TaskAffinity(b, {"a": MSE, "b": MSE}, lr=0.1, shared="")(m), ValueError, "an empty prefix"),
        (lambda m, b: TaskAffinity(b, {"a": MSE, "b": MSE}, lr=0.1)(nn.Identity()),
         ValueError, "no trainable parameter starts with 'trunk.'"),
    ],
)
def test_affinity_inputs_it_cannot_serve(call, error, message):
    model, batches = linear_tasks({"a": [1.0, 0.0, 0.0], "b": [0.0, 1.0, 0.0]})
    with pytest.raises(error, match=message):
        call(model, batches)


def test_affinity_matrix_inputs_it_cannot_serve():
    history = History(("a", "b"))
    history.record_eval(2, {affinity_metric_name(k, s, t): 0.5 for k in ("affinity", "cosine") for s in "ab" for t in "ab"})
    with pytest.raises(ValueError, match="no evaluation at step >= start = 10: its last evaluation is at step 2; lower start"):
        affinity_matrix(history, ["a", "b"], start=10)  # was an all-nan matrix
    with pytest.raises(ValueError, match="it has none; train with eval_fn=TaskAffinity"):
        affinity_matrix(History(("a", "b")), ["a", "b"])
    with pytest.raises(TypeError, match="tasks must be a list of task names, got str 'ab'"):
        affinity_matrix(history, "ab")
    with pytest.raises(ValueError, match="non-empty list of distinct task names, got \\['a', 'a'\\]"):
        affinity_matrix(history, ["a", "a"])
    with pytest.raises(TypeError, match="history must be the History that train\\(\\) returns, got dict"):
        affinity_matrix({}, ["a", "b"])
    with pytest.raises(TypeError, match="start must be an int"):
        affinity_matrix(history, ["a", "b"], start=1.5)
    with pytest.raises(ValueError, match="kind must be 'affinity' or 'cosine'"):
        affinity_matrix(history, ["a", "b"], kind="cosines")


# ---------------------------------------------------------------- the lookahead with the training optimizer

def two_layer_tasks():
    """Two regression tasks on a shared two-layer trunk with heads, so that Adam's state and heads both matter."""
    torch.manual_seed(1)
    x = torch.randn(32, 4)
    model = HardSharingModel(nn.Sequential(nn.Linear(4, 5), nn.Tanh()),
                             {t: nn.Sequential(nn.Linear(5, 1), nn.Flatten(0)) for t in "ab"})
    batches = {"a": (x, x[:, 0] - x[:, 1]), "b": (x, x[:, 1] + 0.5 * x[:, 2])}
    return model, batches


def test_adam_lookahead_with_no_state_is_adams_first_step_not_an_sgd_step():
    model, batches = two_layer_tasks()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    affinity, _ = lookahead_affinity(model, batches, {"a": MSE, "b": MSE}, optimizer=optimizer)
    # by hand: Adam's first step is lr · g / (|g| + ε) (m̂ = g, v̂ = g²), on the trunk only
    x, y_a = batches["a"]
    trunk = dict(model.trunk.named_parameters())
    grads = torch.autograd.grad(MSE(model(x, "a"), y_a), list(trunk.values()))
    stepped = {f"trunk.{n}": p - 1e-3 * g / (g.abs() + 1e-8) for (n, p), g in zip(trunk.items(), grads)}
    _, y_b = batches["b"]
    with torch.no_grad():
        after = MSE(torch.func.functional_call(model, stepped, (x, "b")), y_b)
        before = MSE(model(x, "b"), y_b)
    assert affinity[0, 1].item() == pytest.approx(1 - (after / before).item(), rel=1e-4)
    sgd, _ = lookahead_affinity(model, batches, {"a": MSE, "b": MSE}, lr=1e-3)   # the wrong version: an SGD step
    assert not torch.allclose(sgd, affinity, rtol=0.1, atol=0)
    assert not optimizer.state   # the lookahead gave the optimizer no state


def test_adam_lookahead_with_state_is_one_real_step_on_the_source_task_alone():
    model, batches = two_layer_tasks()
    loss_fns = {"a": MSE, "b": MSE}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):   # joint training steps: the moments now hold both tasks
        optimizer.zero_grad()
        sum(MSE(model(x, t), y) for t, (x, y) in batches.items()).backward()
        optimizer.step()
    saved = {k: v.clone() for k, v in optimizer.state[model.trunk[0].weight].items()}
    weights = model.trunk[0].weight.detach().clone()
    affinity, _ = lookahead_affinity(model, batches, loss_fns, optimizer=optimizer)
    for i, source in enumerate("ab"):   # the step training would take on task i: copies of model and optimizer
        twin = copy.deepcopy(model)
        twin.zero_grad(set_to_none=True)   # no gradient left from the joint steps
        twin_optimizer = torch.optim.Adam(twin.parameters(), lr=1e-2)
        twin_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))   # load_state_dict shares tensors
        x, y = batches[source]
        shared = list(twin.trunk.parameters())
        for p, g in zip(shared, torch.autograd.grad(MSE(twin(x, source), y), shared)):
            p.grad = g
        twin_optimizer.step()   # the heads have no gradient: Adam leaves them
        with torch.no_grad():
            for j, target in enumerate("ab"):
                x, y = batches[target]
                expected = 1 - (MSE(twin(x, target), y) / MSE(model(x, target), y)).item()
                assert affinity[i, j].item() == pytest.approx(expected, rel=1e-4, abs=1e-7)
    torch.testing.assert_close(model.trunk[0].weight, weights)   # neither the model nor the optimizer moved
    for key, value in optimizer.state[model.trunk[0].weight].items():
        torch.testing.assert_close(value, saved[key])


def test_the_tracker_passes_the_optimizer_to_the_lookahead():
    model, batches = two_layer_tasks()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    tracker = TaskAffinity(batches, {"a": MSE, "b": MSE}, optimizer=optimizer, batch_size=32)   # the whole data
    values = tracker(model)
    expected, _ = lookahead_affinity(model, batches, {"a": MSE, "b": MSE}, optimizer=optimizer)
    assert values[affinity_metric_name("affinity", "a", "b")] == pytest.approx(expected[0, 1].item(), rel=1e-3)


def test_the_lookahead_step_is_named_once_and_by_the_right_optimizer():
    model, batches = two_layer_tasks()
    other = torch.optim.Adam(nn.Linear(2, 2).parameters())
    with pytest.raises(ValueError, match="not both"):
        lookahead_affinity(model, batches, {"a": MSE, "b": MSE}, lr=0.1, optimizer=torch.optim.Adam(model.parameters()))
    with pytest.raises(ValueError, match="give the lookahead step"):
        lookahead_affinity(model, batches, {"a": MSE, "b": MSE})
    with pytest.raises(ValueError, match="does not train"):
        lookahead_affinity(model, batches, {"a": MSE, "b": MSE}, optimizer=other)
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        TaskAffinity(batches, {"a": MSE, "b": MSE}, optimizer="adam")
