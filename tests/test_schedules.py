"""Training schedules: joint and alternating loaders, sequential training and its forgetting."""

from collections import Counter

import pytest
import torch
from torch import nn

from mtl_tutorial.bench import examples_per_second
from mtl_tutorial.data import MultiTaskBatchSampler, MultiTaskDataset, multitask_loader
from mtl_tutorial.models import HardSharingModel
from mtl_tutorial.schedules import ScheduleBatchSampler, forgetting, schedule_loader, train_sequential
from mtl_tutorial.training import History, evaluate, mean_squared_error, train


def make_dataset(sizes):
    return MultiTaskDataset({task: (torch.arange(n).float()[:, None], torch.arange(n).float()) for task, n in sizes.items()})


def tasks_in(dataset, batch):
    return [dataset.locate(index)[0] for index in batch]


def test_joint_batches_hold_batch_size_examples_of_every_task_in_task_order():
    dataset = make_dataset({"a": 10, "b": 3, "c": 25})
    sampler = ScheduleBatchSampler(dataset, "joint", batch_size=4, num_batches=9, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 9
    assert all(tasks_in(dataset, batch) == ["a"] * 4 + ["b"] * 4 + ["c"] * 4 for batch in batches)
    b_stream = [index - dataset.offsets[1] for batch in batches for index in batch[4:8]]
    assert all(sorted(b_stream[k : k + 3]) == [0, 1, 2] for k in range(0, 36, 3))  # passes over b, none skipped


def test_round_robin_takes_turns_and_continues_across_epochs():
    dataset = make_dataset({"a": 10, "b": 3, "c": 25})
    sampler = ScheduleBatchSampler(dataset, "round_robin", batch_size=2, num_batches=4, seed=0)
    order = [tasks_in(dataset, batch)[0] for _ in range(3) for batch in sampler]
    assert order == ["a", "b", "c"] * 4
    assert all(len(set(tasks_in(dataset, batch))) == 1 for batch in sampler)


def test_schedule_loader_builds_each_schedule_and_names_the_schedules():
    dataset = make_dataset({"a": 10, "b": 30})
    joint = schedule_loader(dataset, "joint", batch_size=3, num_batches=5)
    assert len(joint) == 5 and all(batch.tasks == ("a",) * 3 + ("b",) * 3 for batch in joint)
    sampled = schedule_loader(dataset, "sampled", 3, 2000, strategy={"a": 1.0, "b": 3.0}, seed=1)
    assert isinstance(sampled.batch_sampler, MultiTaskBatchSampler) and sampled.batch_sampler.replacement
    assert Counter(batch.task for batch in sampled)["b"] / 2000 == pytest.approx(0.75, abs=0.03)
    with pytest.raises(ValueError, match="unknown schedule 'mixed'; schedules are: joint, round_robin, sampled"):
        schedule_loader(dataset, "mixed", 3, 5)
    with pytest.raises(ValueError, match="MultiTaskBatchSampler\\(replacement=True\\)"):
        ScheduleBatchSampler(dataset, "sampled", 3, 5)
    with pytest.raises(ValueError, match="num_batches .* positive int, got 0"):
        schedule_loader(dataset, "joint", 3, 0)


def test_a_joint_step_descends_the_sum_of_the_task_losses():
    """One joint step is one batch per task, summed: plain SGD moves w by -lr * ∇(L_a + L_b)."""
    dataset = MultiTaskDataset({"a": (torch.randn(6, 2), torch.randn(6)), "b": (torch.randn(6, 2), torch.randn(6))})
    model = HardSharingModel(nn.Linear(2, 1), {"a": nn.Flatten(0), "b": nn.Flatten(0)})
    loader = schedule_loader(dataset, "joint", batch_size=6, num_batches=1)
    batch = next(iter(loader))
    losses = {"a": nn.functional.mse_loss, "b": nn.functional.mse_loss}
    expected = model.trunk.weight.detach().clone()
    total = sum(nn.functional.mse_loss(model(dataset.datasets[t].inputs, t), dataset.datasets[t].targets) for t in "ab")
    expected -= 0.1 * torch.autograd.grad(total, model.trunk.weight)[0]
    train(model, [batch], losses, num_steps=1, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), progress=False)
    torch.testing.assert_close(model.trunk.weight.detach(), expected)


def opposite_tasks():
    """Task A: y = 2x, task B: y = -2x, through one shared weight: B's optimum is A's worst case."""
    x = torch.linspace(-1, 1, 32)[:, None]
    data = {"A": (x, 2 * x[:, 0]), "B": (x, -2 * x[:, 0])}
    model = HardSharingModel(nn.Linear(1, 1, bias=False), {"A": nn.Flatten(0), "B": nn.Flatten(0)})
    return x, data, model


def test_sequential_training_records_the_forgetting_of_the_first_task():
    x, data, model = opposite_tasks()
    loaders = {task: multitask_loader(MultiTaskDataset({task: data[task]}), 32) for task in ("A", "B")}
    losses = dict.fromkeys(data, nn.functional.mse_loss)
    history = train_sequential(
        model, loaders, losses, steps_per_task=300, lr=0.05, progress=False,
        eval_fn=lambda m: evaluate(m, data, {"mse": mean_squared_error}), eval_every=50,
    )
    assert history.steps == list(range(1, 601)) and history.eval_steps == list(range(50, 601, 50))
    steps_a, _ = history.loss_curve("A")
    assert steps_a.tolist() == list(range(1, 301))  # A trains in phase 1 only
    assert model.trunk.weight.item() == pytest.approx(-2.0, abs=1e-3)
    result = forgetting(history, "A/mse", phase_end=300, higher_is_better=False)
    assert result.before == pytest.approx(0.0, abs=1e-5)
    # after phase B, w = -2, so A's error is mean((-2x - 2x)^2) = 16 mean(x^2)
    assert result.after == pytest.approx(16 * float((x**2).mean()), rel=1e-3)
    assert result.forgotten == pytest.approx(result.after - result.before)
    assert forgetting(history, "B/mse", 300, higher_is_better=False).forgotten < 0  # B improved after step 300


def test_sequential_checks_its_arguments_and_forgetting_names_what_is_missing():
    _, data, model = opposite_tasks()
    loaders = {"A": [next(iter(multitask_loader(MultiTaskDataset({"A": data["A"]}), 8)))]}
    with pytest.raises(ValueError, match="no loss function for task\\(s\\) A"):
        train_sequential(model, loaders, {"B": nn.functional.mse_loss}, 1)
    with pytest.raises(ValueError, match="steps_per_task has no entry for task\\(s\\) A"):
        train_sequential(model, loaders, {"A": nn.functional.mse_loss}, {"B": 3})
    history = train_sequential(model, loaders, {"A": nn.functional.mse_loss}, {"A": 2}, progress=False,
                               eval_fn=lambda m: {"A/mse": 1.0})
    with pytest.raises(ValueError, match="no metric 'A/acc'.*it has: A/mse"):
        forgetting(history, "A/acc", 2)
    with pytest.raises(ValueError, match="no evaluation at step 1; evaluations were at steps \\[2\\]"):
        forgetting(history, "A/mse", 1)


def test_history_extend_shifts_the_later_run_and_refuses_other_tasks():
    first, later = History(("a", "b")), History(("a", "b"))
    first.record_step(1, {"a": 1.0}, {"a": 1.0}, 1.0)
    first.record_eval(1, {"a/acc": 0.5})
    later.record_step(1, {"b": 2.0}, {"b": 0.5}, 1.0)
    later.record_step(2, {"a": 3.0, "b": 4.0}, {"a": 1.0, "b": 1.0}, 7.0)
    later.record_eval(2, {"a/acc": 0.6, "b/acc": 0.7})
    first.extend(later)
    assert first.steps == [1, 2, 3] and first.eval_steps == [1, 3]
    assert first.losses["b"][1:] == [2.0, 4.0] and first.total_loss == [1.0, 1.0, 7.0]
    assert first.metrics["a/acc"] == [0.5, 0.6] and first.metrics["b/acc"][1] == 0.7
    with pytest.raises(ValueError, match="cannot join runs of different tasks"):
        first.extend(History(("a",)))


def test_examples_per_second_counts_examples_per_step_of_each_schedule():
    dataset = make_dataset({"a": 40, "b": 40})
    model = HardSharingModel(nn.Linear(1, 4), {t: nn.Sequential(nn.Linear(4, 1), nn.Flatten(0)) for t in "ab"})
    runs = {
        "joint": (model, schedule_loader(dataset, "joint", 4, 10)),
        "alternating": (model, schedule_loader(dataset, "round_robin", 4, 10)),
    }
    before = [p.detach().clone() for p in model.parameters()]
    result = examples_per_second(runs, dict.fromkeys("ab", nn.functional.mse_loss), num_steps=3, rounds=2)
    assert result["joint"]["examples_per_step"] == 8 and result["alternating"]["examples_per_step"] == 4
    for entry in result.values():
        assert entry["examples_per_s"] == pytest.approx(entry["examples_per_step"] / entry["seconds_per_step"])
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))  # copies were trained
    with pytest.raises(ValueError, match="yielded 10 batches; it needs at least num_steps = 20"):
        examples_per_second(runs, dict.fromkeys("ab", nn.functional.mse_loss), num_steps=20)
