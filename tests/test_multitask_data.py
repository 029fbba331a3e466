"""MultiTaskDataset and its samplers: coverage per epoch, task frequencies, collation."""

import math
from collections import Counter

import numpy as np
import pytest
import torch

from mtl_tutorial.data import (
    MultiTaskBatchSampler,
    MultiTaskDataset,
    collate_multitask,
    multitask_loader,
    task_probabilities,
)
from mtl_tutorial.data.multitask import TaskStreams

SIZES = {"big": 230, "mid": 70, "small": 11}


def make_dataset(sizes=SIZES):
    return MultiTaskDataset(
        {task: (torch.arange(size).float()[:, None], torch.arange(size) * 10) for task, size in sizes.items()}
    )


def test_dataset_length_items_and_index_map():
    dataset = make_dataset()
    assert len(dataset) == 311
    assert dataset.offsets == [0, 230, 300, 311]
    item = dataset[235]
    assert (item.task, item.index, item.input.item(), item.target.item()) == ("mid", 5, 5.0, 50)
    assert dataset.locate(310) == ("small", 10)
    assert [dataset.locate(i) for i in range(len(dataset))] == [
        (task, i) for task, size in SIZES.items() for i in range(size)
    ]
    with pytest.raises(IndexError, match="out of range"):
        dataset[311]


def test_dataset_validates_tasks():
    with pytest.raises(ValueError, match="task 'a' has 3 inputs but 2 targets"):
        MultiTaskDataset({"a": (torch.zeros(3), torch.zeros(2))})
    with pytest.raises(ValueError, match="task 'b' has no examples"):
        MultiTaskDataset({"a": ([1], [0]), "b": ([], [])})
    with pytest.raises(ValueError, match="tasks is empty"):
        MultiTaskDataset({})
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        MultiTaskBatchSampler(make_dataset(), batch_size=0)


@pytest.mark.parametrize("strategy", ["proportional", "uniform", "temperature"])
@pytest.mark.parametrize("mixed", [False, True])
def test_every_example_exactly_once_per_epoch(strategy, mixed):
    dataset = make_dataset()
    sampler = MultiTaskBatchSampler(dataset, batch_size=8, strategy=strategy, mixed=mixed, seed=3)
    for _ in range(2):  # two epochs, each a full cover with its own shuffle
        batches = list(sampler)
        assert len(batches) == len(sampler)
        counts = Counter(index for batch in batches for index in batch)
        assert sorted(counts) == list(range(len(dataset))) and set(counts.values()) == {1}
        assert all(1 <= len(batch) <= 8 for batch in batches)
        if not mixed:
            assert all(len({dataset.locate(i)[0] for i in batch}) == 1 for batch in batches)


def test_epochs_reshuffle_and_seed_reproduces():
    dataset = make_dataset()
    first = MultiTaskBatchSampler(dataset, batch_size=8, seed=1)
    second = MultiTaskBatchSampler(dataset, batch_size=8, seed=1)
    epoch_1, epoch_2 = list(first), list(first)
    assert epoch_1 == list(second) and epoch_1 != epoch_2


def test_task_probabilities_formulas():
    sizes = {"a": 100, "b": 400}
    assert task_probabilities(sizes, "proportional") == pytest.approx({"a": 0.2, "b": 0.8})
    assert task_probabilities(sizes, "uniform") == pytest.approx({"a": 0.5, "b": 0.5})
    assert task_probabilities(sizes, "temperature", temperature=2.0) == pytest.approx({"a": 1 / 3, "b": 2 / 3})
    with pytest.raises(ValueError, match="unknown strategy 'random'; strategies are: proportional"):
        task_probabilities(sizes, "random")
    assert task_probabilities(sizes, "temperature", temperature=math.inf) == pytest.approx({"a": 0.5, "b": 0.5})
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="temperature must be > 0 \\(math.inf for uniform\\)"):
            task_probabilities(sizes, "temperature", temperature=bad)


def test_temperature_one_is_proportional_and_a_small_temperature_picks_the_largest_task():
    sizes = {"sentiment": 592, "pos": 2200, "small": 11}
    proportional = task_probabilities(sizes, "proportional")
    assert task_probabilities(sizes, "temperature", temperature=1.0) == proportional
    assert proportional == pytest.approx({task: size / 2803 for task, size in sizes.items()}, rel=1e-12)
    # τ = 0.01: 2200^100 overflows a float; in log space p ∝ (N_t / N_max)^100, one-hot up to 1e-57
    cold = task_probabilities(sizes, "temperature", temperature=0.01)
    assert cold["pos"] == 1.0 and cold["sentiment"] == pytest.approx((592 / 2200) ** 100, rel=1e-9)
    tied = task_probabilities({"a": 2200, "b": 2200, "c": 592}, "temperature", temperature=0.01)
    assert tied["a"] == tied["b"] == pytest.approx(0.5)


@pytest.mark.parametrize("temperature", [0.01, 0.001])
@pytest.mark.parametrize("mixed", [False, True])
def test_a_small_temperature_trains_the_largest_remaining_task_first(temperature, mixed):
    dataset = make_dataset()  # 230, 70 and 11 examples; at τ = 0.001 (70/230)^1000 underflows to 0
    batches = list(MultiTaskBatchSampler(dataset, 8, strategy="temperature", temperature=temperature, mixed=mixed))
    tasks = [dataset.locate(index)[0] for batch in batches for index in batch]
    assert tasks == ["big"] * 230 + ["mid"] * 70 + ["small"] * 11
    assert sorted(index for batch in batches for index in batch) == list(range(len(dataset)))


@pytest.mark.parametrize("strategy", ["proportional", "uniform", "temperature"])
@pytest.mark.parametrize("mixed", [False, True])
def test_task_frequencies_follow_the_strategy_while_all_tasks_remain(strategy, mixed):
    sizes = {"a": 3000, "b": 12000}
    dataset = MultiTaskDataset({task: (torch.zeros(n), torch.zeros(n)) for task, n in sizes.items()})
    sampler = MultiTaskBatchSampler(dataset, batch_size=1, strategy=strategy, mixed=mixed, seed=0)
    head = [dataset.locate(batch[0])[0] for batch, _ in zip(sampler, range(2000))]  # no task runs out yet
    expected = task_probabilities(sizes, strategy, temperature=2.0)
    assert Counter(head)["a"] / len(head) == pytest.approx(expected["a"], abs=0.03)


def test_uniform_single_task_batches_take_turns_until_a_task_runs_out():
    dataset = make_dataset({"a": 4, "b": 10})
    tasks = [dataset.locate(batch[0])[0] for batch in MultiTaskBatchSampler(dataset, 2, strategy="uniform")]
    assert tasks == ["a", "b", "a", "b", "b", "b", "b"]


def test_loader_yields_collated_batches():
    dataset = make_dataset()
    batches = list(multitask_loader(dataset, batch_size=16, mixed=True, seed=0))
    batch = batches[0]
    assert batch.inputs.shape == (16, 1) and batch.targets.shape == (16,)
    assert len(batch.tasks) == 16 and batch.indices.shape == (16,)
    torch.testing.assert_close(batch.targets, batch.indices * 10)  # the item's index is its place in its task
    mixed = next(b for b in batches if not b.is_single_task)
    with pytest.raises(ValueError, match="mixes tasks .*use batch.tasks"):
        mixed.task


def test_collate_keeps_texts_as_a_list():
    dataset = MultiTaskDataset({"sentiment": (["good", "bad"], torch.tensor([1, 0]))})
    batch = collate_multitask([dataset[0], dataset[1]])
    assert batch.inputs == ["good", "bad"] and batch.task == "sentiment"
    assert batch.targets.tolist() == [1, 0]


# Sampling with replacement (T5-style temperature sampling): p_t is each task's share of the batches.

def task_of_batches(dataset, batches):
    return [dataset.locate(batch[0])[0] for batch in batches]


@pytest.mark.parametrize(("strategy", "temperature"), [("proportional", 1.0), ("temperature", 2.0), ("temperature", 5.0), ("uniform", 1.0)])
@pytest.mark.parametrize("mixed", [False, True])
def test_with_replacement_the_task_shares_follow_p_t(strategy, temperature, mixed):
    sizes = {"big": 2000, "mid": 300, "small": 20}
    dataset = make_dataset(sizes)
    sampler = MultiTaskBatchSampler(dataset, 4, strategy, temperature, mixed=mixed, seed=1, replacement=True, num_batches=3000)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3000 and all(len(batch) == 4 for batch in batches)
    tasks = [dataset.locate(index)[0] for batch in batches for index in batch]
    expected = task_probabilities(sizes, strategy, temperature)
    for task, p in expected.items():
        assert Counter(tasks)[task] / len(tasks) == pytest.approx(p, abs=0.02), task
    if mixed:  # the task of each example is drawn, so batches mix tasks
        assert sum(len({dataset.locate(i)[0] for i in batch}) > 1 for batch in batches) > 1000
    else:
        assert all(len({dataset.locate(i)[0] for i in batch}) == 1 for batch in batches)


@pytest.mark.parametrize("mixed", [False, True])
def test_with_replacement_every_example_of_a_task_is_seen_once_before_any_is_repeated(mixed):
    sizes = {"a": 10, "b": 7}
    dataset = make_dataset(sizes)
    sampler = MultiTaskBatchSampler(dataset, 3, "uniform", mixed=mixed, seed=4, replacement=True, num_batches=5)
    stream = [index for _ in range(8) for batch in sampler for index in batch]  # 8 epochs: passes span epochs
    for t, (task, size) in enumerate(sizes.items()):
        own = [index - dataset.offsets[t] for index in stream if dataset.locate(index)[0] == task]
        passes = [own[k : k + size] for k in range(0, len(own) - size + 1, size)]
        assert len(passes) >= 3
        assert all(sorted(one_pass) == list(range(size)) for one_pass in passes), task
        assert passes[0] != passes[1]  # each pass is reshuffled
        assert sampler.streams.passes[t] == math.ceil(len(own) / size)


def test_with_replacement_same_seed_same_batches_and_another_seed_others():
    dataset = make_dataset()
    first = [list(MultiTaskBatchSampler(dataset, 5, "temperature", 3.0, seed=7, replacement=True, num_batches=40)) for _ in range(2)]
    assert first[0] == first[1]
    assert first[0] != list(MultiTaskBatchSampler(dataset, 5, "temperature", 3.0, seed=8, replacement=True, num_batches=40))


def test_a_tiny_temperature_samples_the_largest_task_without_overflow():
    dataset = make_dataset()
    sampler = MultiTaskBatchSampler(dataset, 4, "temperature", 0.01, replacement=True, num_batches=200)
    assert set(task_of_batches(dataset, sampler)) == {"big"}
    assert task_probabilities({"a": 2200, "b": 220}, "temperature", 0.01)["a"] == 1.0


def test_a_fixed_mix_sets_the_shares_and_is_validated():
    dataset = make_dataset()
    mix = {"big": 1.0, "mid": 0.0, "small": 3.0}
    assert task_probabilities(dataset.sizes, mix) == {"big": 0.25, "mid": 0.0, "small": 0.75}
    tasks = task_of_batches(dataset, MultiTaskBatchSampler(dataset, 2, mix, replacement=True, num_batches=4000))
    assert "mid" not in tasks and Counter(tasks)["small"] / len(tasks) == pytest.approx(0.75, abs=0.02)
    with pytest.raises(ValueError, match="have weight 0, but with replacement=False an epoch visits every example"):
        MultiTaskBatchSampler(dataset, 2, mix)
    without_zero = {"big": 1.0, "mid": 1.0, "small": 2.0}
    covered = sorted(i for batch in MultiTaskBatchSampler(dataset, 2, without_zero) for i in batch)
    assert covered == list(range(len(dataset)))  # one pass, the mix only sets the order
    with pytest.raises(ValueError, match="unknown task\\(s\\) 'tiny'"):
        task_probabilities(dataset.sizes, {**mix, "tiny": 1.0})
    with pytest.raises(ValueError, match="no weight for task\\(s\\) 'mid'"):
        task_probabilities(dataset.sizes, {"big": 1.0, "small": 1.0})
    with pytest.raises(ValueError, match="finite numbers >= 0"):
        task_probabilities(dataset.sizes, {"big": -1.0, "mid": 1.0, "small": 1.0})
    with pytest.raises(ValueError, match="sum to 0"):
        task_probabilities(dataset.sizes, dict.fromkeys(dataset.sizes, 0.0))


def test_num_batches_goes_with_replacement_only():
    dataset = make_dataset()
    with pytest.raises(ValueError, match="num_batches .* must be a positive int, got None"):
        MultiTaskBatchSampler(dataset, 4, replacement=True)
    with pytest.raises(ValueError, match="num_batches is for replacement=True"):
        MultiTaskBatchSampler(dataset, 4, num_batches=10)
    loader = multitask_loader(dataset, 4, "uniform", replacement=True, num_batches=12, seed=0)
    assert len(loader) == 12 and len(list(loader)) == 12


def test_without_replacement_the_default_is_unchanged():
    dataset = make_dataset()
    default = list(MultiTaskBatchSampler(dataset, 8, "temperature", 2.0, seed=3))
    explicit = list(MultiTaskBatchSampler(dataset, 8, "temperature", 2.0, seed=3, replacement=False))
    assert default == explicit and sorted(i for batch in default for i in batch) == list(range(len(dataset)))


# Inputs the dataset and the samplers cannot serve: a clear error where they enter.


@pytest.mark.parametrize(
    "tasks, error, message",
    [
        ([("a", (torch.zeros(2), torch.zeros(2)))],
         TypeError, "tasks must be a dict \\{'task name': \\(inputs, targets\\)\\}, got list"),
        ({"a": [torch.zeros(2, 1), torch.zeros(2)]},
         TypeError, "first item is a Tensor; .*pass the tuple \\(inputs, targets\\), not a list"),
        ({"a": torch.zeros(6, 2)}, TypeError, "the items of task 'a' must be \\(input, target\\) pairs"),
        ({"a": (torch.zeros(6, 2), torch.zeros(6), torch.zeros(6))},
         ValueError, "task 'a' must be an \\(inputs, targets\\) pair, got a tuple of 3"),
        ({"a": (5, torch.zeros(5))},
         TypeError, "the inputs of task 'a' must be a tensor or a list with one entry per example, got int"),
        ({"a": ({"input_ids": torch.zeros(2, 3)}, torch.zeros(2))}, TypeError, "the inputs of task 'a' .* got dict"),
        ({"a": 7},
         TypeError, "task 'a' must be an \\(inputs, targets\\) tuple or a Dataset of \\(input, target\\) pairs, got int"),
    ],
)
def test_dataset_refuses_data_it_cannot_split_into_examples(tasks, error, message):
    with pytest.raises(error, match=message):
        MultiTaskDataset(tasks)


def test_dataset_takes_a_dataset_of_pairs_and_int_like_indices():
    dataset = MultiTaskDataset({"a": [(torch.zeros(1), 0), (torch.ones(1), 1)]})
    assert dataset[1].target == 1 and dataset[np.int64(0)].target == 0
    with pytest.raises(TypeError, match="index must be an int, got float 2.5"):
        make_dataset()[2.5]
    with pytest.raises(TypeError, match="index must be an int, got bool"):
        make_dataset()[True]


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: task_probabilities({}), ValueError, "sizes is empty"),
        (lambda: task_probabilities([100, 400]), TypeError, "sizes must be a dict task -> N_t, got list"),
        (lambda: task_probabilities({"a": 0, "b": 10}, "uniform"),
         ValueError, "task sizes N_t must be ints >= 1 .* got \\{'a': 0\\}"),
        (lambda: task_probabilities({"a": -1, "b": 10}), ValueError, "task sizes N_t must be ints >= 1"),
        (lambda: task_probabilities({"a": True, "b": 10}), ValueError, "task sizes N_t must be ints >= 1"),
        (lambda: task_probabilities({"a": 1, "b": 2}, "temperature", "2"),
         TypeError, "temperature must be a number > 0 .* got str"),
        (lambda: task_probabilities({"a": 1, "b": 2}, "temperature", True),
         TypeError, "temperature must be a number > 0 .* got bool"),
        (lambda: task_probabilities({"a": 1, "b": 2}, {"a": True, "b": 1.0}),
         ValueError, "mix weights must be finite numbers >= 0"),
        (lambda: task_probabilities({"a": 1, "b": 2}, {"a": float("nan"), "b": 1.0}),
         ValueError, "mix weights must be finite numbers >= 0"),
        (lambda: MultiTaskBatchSampler({"a": (torch.zeros(5), torch.zeros(5))}, 2),
         TypeError, "dataset must be a MultiTaskDataset, got dict; wrap"),
        (lambda: MultiTaskBatchSampler(make_dataset(), True),
         ValueError, "batch_size must be a positive int, got True"),
        (lambda: MultiTaskBatchSampler(make_dataset(), 2, seed=-1), ValueError, "seed must be an int >= 0, got -1"),
        (lambda: MultiTaskBatchSampler(make_dataset(), 2, seed=0.5), ValueError, "seed must be an int >= 0, got 0.5"),
        (lambda: MultiTaskBatchSampler(make_dataset(), 2, mixed="no"),
         TypeError, "mixed must be True or False, got str 'no'"),
        (lambda: multitask_loader(make_dataset(), 2, replacement=1, num_batches=3),
         TypeError, "replacement must be True or False, got int"),
        (lambda: multitask_loader(make_dataset(), 2, replacement=True, num_batches=True),
         ValueError, "num_batches .* must be a positive int, got True"),
        (lambda: TaskStreams(make_dataset(), 0), TypeError, "rng must be a numpy Generator, got int"),
        (lambda: TaskStreams(make_dataset(), np.random.default_rng(0)).take(3, 2),
         ValueError, "task is a position 0..2 in big, mid, small, got 3"),
        (lambda: TaskStreams(make_dataset(), np.random.default_rng(0)).take(0, -1),
         ValueError, "count must be >= 0, got -1"),
        (lambda: collate_multitask([]), ValueError, "items is empty"),
        (lambda: collate_multitask([(torch.zeros(1), 0)]),
         TypeError, "collates the MultiTaskItems of a MultiTaskDataset, got a tuple"),
    ],
)
def test_probabilities_samplers_and_collation_refuse_what_they_cannot_serve(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_numpy_sizes_and_weights_are_numbers_too():
    assert task_probabilities({"a": np.int64(100), "b": 400}) == pytest.approx({"a": 0.2, "b": 0.8})
    mix = task_probabilities({"a": 1, "b": 2}, {"a": np.float32(1.0), "b": 3.0})
    assert mix == {"a": 0.25, "b": 0.75} and all(type(p) is float for p in mix.values())
