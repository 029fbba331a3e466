"""Several named tasks in one dataset, and the batch samplers that decide which task trains when.

``MultiTaskDataset`` puts the tasks end to end: global index ``i`` belongs to the task whose
range [offset_t, offset_t + N_t) holds it, so the index map covers every example of every task,
once. ``MultiTaskBatchSampler`` turns it into batches, drawing the task of each batch (or of each
example, ``mixed=True``) with probability

    proportional:  p_t = N_t / Σ_s N_s
    uniform:       p_t = 1 / T
    temperature:   p_t ∝ N_t^(1/τ)        (τ = 1 is proportional, τ → ∞ is uniform, τ → 0 the largest task)
    a fixed mix:   p_t = w_t / Σ_s w_s    (strategy given as a dict {task: w_t})

The size-based rules are p = softmax_t(log N_t / τ) (τ = 1, τ = ∞, the given τ), computed in log
space because N_t^(1/τ) overflows a float for small τ (2200^100 > 10^308).

It has two modes, and they differ in what p_t controls:

- ``replacement=False`` (default): one epoch is one pass over every example, so each task's share
  of an epoch is N_t / Σ N_s whatever the strategy; the strategy only sets the *order*. While every
  task has examples left, the next task is drawn from p_t (uniform: tasks take turns); a task that
  runs out leaves the draw and p is the same rule over the tasks that remain.
- ``replacement=True, num_batches=N``: temperature sampling as in multilingual NMT and T5
  (Arivazhagan et al. 2019; Raffel et al. 2020). An epoch is N batches whose tasks are drawn i.i.d.
  from p_t, so p_t *is* each task's share: small tasks are revisited, large ones under-sampled.
  Within a task, examples are drawn without replacement during a pass over that task and
  reshuffled when it runs out, so every example is seen once before any is seen again.
"""

from __future__ import annotations

import bisect
import math
import numbers
import operator
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from mtl_tutorial.checks import check_batch_size, check_task_data  # their home until methods had to use them too

STRATEGIES = ("proportional", "uniform", "temperature")


class MultiTaskItem(NamedTuple):
    """One example: its task, its position inside that task, its input and its target."""

    task: str
    index: int
    input: Any
    target: Any


def _check_seed(seed: Any) -> None:
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")


def _check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")


class _PairDataset(Dataset):
    """An (inputs, targets) pair seen as a dataset of (input, target) examples."""

    def __init__(self, inputs: Sequence | torch.Tensor, targets: Sequence | torch.Tensor) -> None:
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        return self.inputs[index], self.targets[index]


class MultiTaskDataset(Dataset):
    """Named tasks end to end: ``dataset[i]`` is a ``MultiTaskItem(task, index, input, target)``.

    tasks: task name -> ``(inputs, targets)`` (tensors or lists of equal length N_t), or a
    ``Dataset`` whose items are ``(input, target)`` pairs. ``len(dataset) = Σ_t N_t``.
    """

    def __init__(self, tasks: Mapping[str, tuple[Any, Any] | Dataset]) -> None:
        if not isinstance(tasks, Mapping):
            raise TypeError(
                f"tasks must be a dict {{'task name': (inputs, targets)}}, got {type(tasks).__name__}; "
                f"e.g. MultiTaskDataset({{'sentiment': (texts, labels)}})"
            )
        if not tasks:
            raise ValueError("tasks is empty; pass {'task name': (inputs, targets), ...}")
        self.datasets: dict[str, Dataset] = {}
        self.sizes: dict[str, int] = {}
        for name, data in tasks.items():
            if not isinstance(name, str):
                raise TypeError(f"task names must be strings, got {name!r}")
            self.sizes[name] = check_task_data(name, data)
            self.datasets[name] = _PairDataset(*data) if isinstance(data, tuple) else data
        self.tasks: tuple[str, ...] = tuple(self.datasets)
        self.offsets: list[int] = np.cumsum([0, *self.sizes.values()]).tolist()  # (T + 1,)

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, index: int) -> tuple[str, int]:
        """Global index -> (task, index inside that task)."""
        if isinstance(index, bool) or not hasattr(index, "__index__"):
            raise TypeError(f"index must be an int, got {type(index).__name__} {index!r}")
        index = operator.index(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} is out of range for a dataset of {len(self)} examples")
        position = bisect.bisect_right(self.offsets, index) - 1
        return self.tasks[position], index - self.offsets[position]

    def __getitem__(self, index: int) -> MultiTaskItem:
        task, local = self.locate(index)
        example_input, target = self.datasets[task][local]
        return MultiTaskItem(task, local, example_input, target)


Strategy = str | Mapping[str, float]
"""``"proportional"``, ``"uniform"``, ``"temperature"``, or a fixed mix ``{task: weight}``."""


def task_probabilities(
    sizes: Mapping[str, int], strategy: Strategy = "proportional", temperature: float = 2.0
) -> dict[str, float]:
    """p_t of each strategy (module docstring): task name -> probability, summing to 1.

    sizes: task name -> N_t. ``temperature`` (τ > 0, any size: computed in log space; ``math.inf``
    gives uniform) is used by the ``temperature`` strategy only. A dict strategy gives a weight w_t ≥ 0 per task of ``sizes``
    (extra tasks are an error), normalised to p_t = w_t / Σ_s w_s.
    """
    if not isinstance(sizes, Mapping):
        raise TypeError(f"sizes must be a dict task -> N_t, got {type(sizes).__name__}; e.g. dataset.sizes")
    if not sizes:
        raise ValueError("sizes is empty; give the number of examples of every task, e.g. dataset.sizes")
    bad = {task: size for task, size in sizes.items()
           if not isinstance(size, numbers.Integral) or isinstance(size, bool) or size < 1}
    if bad:
        raise ValueError(f"task sizes N_t must be ints >= 1 (numbers of examples), got {bad}")
    if isinstance(strategy, Mapping):
        return _fixed_mix(sizes, strategy)
    if strategy not in STRATEGIES:
        raise ValueError(
            f"unknown strategy {strategy!r}; strategies are: {', '.join(STRATEGIES)}, or a dict "
            f"{{task: weight}} for a fixed mix"
        )
    if strategy == "temperature" and (not isinstance(temperature, numbers.Real) or isinstance(temperature, bool)):
        raise TypeError(
            f"temperature must be a number > 0 (math.inf for uniform), got {type(temperature).__name__} {temperature!r}"
        )
    if strategy == "temperature" and not temperature > 0:  # τ = inf is allowed: 1/τ = 0, uniform
        raise ValueError(f"temperature must be > 0 (math.inf for uniform), got {temperature!r}")
    exponent = {"proportional": 1.0, "uniform": 0.0, "temperature": 1.0 / temperature}[strategy]
    log_sizes = torch.tensor([float(size) for size in sizes.values()], dtype=torch.float64).log()
    probabilities = torch.softmax(exponent * log_sizes, dim=0)
    return dict(zip(sizes, probabilities.tolist()))


def _fixed_mix(sizes: Mapping[str, int], mix: Mapping[str, float]) -> dict[str, float]:
    """p_t = w_t / Σ_s w_s over the tasks of ``sizes``; every task needs a finite weight ≥ 0."""
    unknown = [task for task in mix if task not in sizes]
    if unknown:
        raise ValueError(f"the mix names unknown task(s) {', '.join(map(repr, unknown))}; tasks are: {', '.join(sizes)}")
    missing = [task for task in sizes if task not in mix]
    if missing:
        raise ValueError(f"the mix has no weight for task(s) {', '.join(map(repr, missing))}; give every task a weight")
    bad = {task: w for task, w in mix.items()
           if not (isinstance(w, numbers.Real) and not isinstance(w, bool) and math.isfinite(w) and w >= 0)}
    if bad:
        raise ValueError(f"mix weights must be finite numbers >= 0, got {bad}")
    total = sum(mix[task] for task in sizes)
    if total <= 0:
        raise ValueError(f"the mix weights of tasks {', '.join(sizes)} sum to 0; give at least one a positive weight")
    return {task: float(mix[task]) / float(total) for task in sizes}


class TaskStreams:
    """Per task, an endless stream of global indices: pass after pass over the task's examples,
    each pass a fresh permutation. ``take(t, k)`` returns the next k of task t, so every example
    of a task is seen once before any is seen twice; ``passes[t]`` counts the passes started.
    (A batch larger than N_t necessarily holds an example twice.)"""

    def __init__(self, dataset: MultiTaskDataset, rng: np.random.Generator) -> None:
        _check_dataset(dataset)
        if not isinstance(rng, np.random.Generator):
            raise TypeError(
                f"rng must be a numpy Generator, got {type(rng).__name__}; e.g. np.random.default_rng(seed)"
            )
        self.dataset, self.rng = dataset, rng
        self.sizes = list(dataset.sizes.values())
        self.orders = [np.empty(0, dtype=np.int64) for _ in self.sizes]
        self.cursors = [0] * len(self.sizes)
        self.passes = [0] * len(self.sizes)

    def take(self, task: int, count: int) -> list[int]:
        if not 0 <= task < len(self.sizes):
            raise ValueError(
                f"task is a position 0..{len(self.sizes) - 1} in {', '.join(self.dataset.tasks)}, got {task!r}"
            )
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        taken: list[int] = []
        while len(taken) < count:
            if self.cursors[task] == len(self.orders[task]):
                self.orders[task] = self.dataset.offsets[task] + self.rng.permutation(self.sizes[task])
                self.cursors[task] = 0
                self.passes[task] += 1
            start = self.cursors[task]
            stop = min(start + count - len(taken), len(self.orders[task]))
            taken += self.orders[task][start:stop].tolist()
            self.cursors[task] = stop
        return taken


def _check_dataset(dataset: Any) -> None:
    if not isinstance(dataset, MultiTaskDataset):
        raise TypeError(
            f"dataset must be a MultiTaskDataset, got {type(dataset).__name__}; wrap the tasks first: "
            f"MultiTaskDataset({{'task name': (inputs, targets), ...}})"
        )


def check_num_batches(num_batches: object) -> None:
    """Raise unless ``num_batches`` (batches per epoch when sampling with replacement) is a positive int."""
    if not isinstance(num_batches, int) or isinstance(num_batches, bool) or num_batches < 1:
        raise ValueError(
            f"num_batches (batches per epoch when sampling with replacement) must be a positive int, "
            f"got {num_batches!r}"
        )


class MultiTaskBatchSampler(Sampler[list[int]]):
    """Batches of global indices of a ``MultiTaskDataset`` (the two modes: module docstring).

    Single-task batches (default): a batch holds ``batch_size`` examples of one task, the task
    drawn from the strategy (without replacement the last batch of a task may be smaller).
    ``mixed=True``: the task of each *example* is drawn instead, so one batch mixes tasks.
    ``replacement=False``: an epoch covers every example exactly once, reshuffled every epoch;
    ``replacement=True``: an epoch is ``num_batches`` batches, tasks drawn i.i.d. from p_t, and
    each task's pass over its examples continues across epochs (``streams.passes`` counts them).
    Iterating again starts the next epoch. Same seed, same batches.

    Data-parallel training (``mtl_tutorial.distributed``): with ``num_replicas=W, rank=r`` the
    sampler yields rank r's shard of each global batch, positions r, r + W, r + 2W, ... of it, so
    the W shards are disjoint and together make the batch. Every rank builds the sampler with the
    same arguments and seed and so draws the same global batches: with single-task batches, every
    rank trains the same task at each step. Every batch must hold at least W examples.
    """

    def __init__(
        self,
        dataset: MultiTaskDataset,
        batch_size: int,
        strategy: Strategy = "proportional",
        temperature: float = 2.0,
        mixed: bool = False,
        seed: int = 0,
        replacement: bool = False,
        num_batches: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        _check_dataset(dataset)
        check_batch_size(batch_size)
        _check_flag("mixed", mixed)
        _check_flag("replacement", replacement)
        _check_seed(seed)
        if not isinstance(num_replicas, int) or isinstance(num_replicas, bool) or num_replicas < 1:
            raise ValueError(f"num_replicas (ranks sharing each batch) must be a positive int, got {num_replicas!r}")
        if not isinstance(rank, int) or isinstance(rank, bool) or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be an int in 0..{num_replicas - 1} for num_replicas={num_replicas}, got {rank!r}")
        if replacement:
            check_num_batches(num_batches)
        elif num_batches is not None:
            raise ValueError(
                "num_batches is for replacement=True; with replacement=False an epoch is one pass over "
                f"every example ({len(dataset)} examples), so its length follows from the data"
            )
        self.dataset, self.batch_size, self.mixed, self.seed = dataset, batch_size, mixed, seed
        self.strategy, self.temperature = strategy, temperature
        self.replacement, self.num_batches = replacement, num_batches
        self.probabilities = task_probabilities(dataset.sizes, strategy, temperature)
        if not replacement and isinstance(strategy, Mapping) and min(self.probabilities.values()) == 0:
            never = [task for task, p in self.probabilities.items() if p == 0]
            raise ValueError(
                f"task(s) {', '.join(never)} have weight 0, but with replacement=False an epoch visits "
                f"every example; give them a weight > 0, drop them, or sample with replacement=True"
            )
        self.num_replicas, self.rank = num_replicas, rank
        if num_replicas > 1:
            self._check_shards()
        self.streams = TaskStreams(dataset, np.random.default_rng([seed, 2**31]))
        self.epoch = 0

    def _check_shards(self) -> None:
        """Raise unless every global batch holds at least one example per rank."""
        if self.batch_size < self.num_replicas:
            raise ValueError(
                f"batch_size={self.batch_size} is smaller than num_replicas={self.num_replicas}: every rank needs at "
                f"least one example of each batch; batch_size is the global batch (all ranks together), so use "
                f"batch_size >= {self.num_replicas} or fewer processes"
            )
        if self.replacement:
            return
        sizes = {f"task {task!r}": size for task, size in self.dataset.sizes.items()}
        if self.mixed:
            sizes = {"the dataset": len(self.dataset)}
        for name, size in sizes.items():
            last = size % self.batch_size or self.batch_size
            if last < self.num_replicas:
                raise ValueError(
                    f"{name} has {size} examples, so its last batch (batch_size={self.batch_size}) holds {last}, fewer "
                    f"than the {self.num_replicas} ranks that share every batch; pick a batch_size that leaves at "
                    f"least {self.num_replicas} in the last batch, or sample with replacement=True (full batches only)"
                )

    def __len__(self) -> int:
        if self.replacement:
            return self.num_batches
        if self.mixed:
            return math.ceil(len(self.dataset) / self.batch_size)
        return sum(math.ceil(size / self.batch_size) for size in self.dataset.sizes.values())

    def _task_order(self, counts: list[int], rng: np.random.Generator) -> list[int]:
        """A task position per unit (batch or example): task t appears counts[t] times."""
        remaining = np.array(counts)
        probabilities = self._probabilities(remaining)
        order: list[int] = []
        turn = 0
        while remaining.sum() > 0:
            if self.strategy == "uniform":  # round robin over the tasks that still have examples
                while remaining[turn % len(remaining)] == 0:
                    turn += 1
                task = turn % len(remaining)
                turn += 1
            else:
                task = int(rng.choice(len(remaining), p=probabilities))
            order.append(task)
            remaining[task] -= 1
            if remaining[task] == 0 and remaining.sum() > 0:  # task leaves the draw
                probabilities = self._probabilities(remaining)
        return order

    def _probabilities(self, remaining: np.ndarray) -> np.ndarray:
        """(T,) p_t of the strategy over the tasks with units remaining (0 for the others)."""
        sizes = self.dataset.sizes
        active = {task: sizes[task] for task, left in zip(self.dataset.tasks, remaining) if left > 0}
        strategy = self.strategy
        if isinstance(strategy, Mapping):
            strategy = {task: strategy[task] for task in active}
        active_p = task_probabilities(active, strategy, self.temperature)
        return np.array([active_p.get(task, 0.0) for task in self.dataset.tasks])

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._global_batches():
            yield batch[self.rank :: self.num_replicas]

    def _global_batches(self) -> Iterator[list[int]]:
        """One epoch of whole batches (every rank draws the same ones)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        if self.replacement:
            yield from self._sample_with_replacement(rng)
            return
        queues = [
            (self.dataset.offsets[t] + rng.permutation(size)).tolist()
            for t, size in enumerate(self.dataset.sizes.values())
        ]
        if self.mixed:
            order = self._task_order([len(queue) for queue in queues], rng)
            flat = [queues[t].pop() for t in order]
            for start in range(0, len(flat), self.batch_size):
                yield flat[start : start + self.batch_size]
        else:
            counts = [math.ceil(len(queue) / self.batch_size) for queue in queues]
            for t in self._task_order(counts, rng):
                batch, queues[t] = queues[t][: self.batch_size], queues[t][self.batch_size :]
                yield batch

    def _sample_with_replacement(self, rng: np.random.Generator) -> Iterator[list[int]]:
        """``num_batches`` batches, each batch's (or example's) task drawn i.i.d. from p_t."""
        p = np.array(list(self.probabilities.values()))
        for _ in range(self.num_batches):
            if self.mixed:
                yield [self.streams.take(int(t), 1)[0] for t in rng.choice(len(p), size=self.batch_size, p=p)]
            else:
                yield self.streams.take(int(rng.choice(len(p), p=p)), self.batch_size)


@dataclass
class MultiTaskBatch:
    """A collated batch: ``tasks[i]``, ``indices[i]`` (position inside its task), ``inputs``, ``targets``.

    inputs: stacked tensor (B, ...) or list of B texts; targets: (B, ...) tensor.
    """

    tasks: tuple[str, ...]
    indices: torch.Tensor
    inputs: Any
    targets: torch.Tensor

    def to(self, device: torch.device | str) -> MultiTaskBatch:
        """The same batch with its tensors (and tensors inside a dict of inputs) on ``device``."""
        inputs = self.inputs
        if isinstance(inputs, torch.Tensor):
            inputs = inputs.to(device)
        elif isinstance(inputs, Mapping):
            inputs = {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in inputs.items()}
        return MultiTaskBatch(self.tasks, self.indices, inputs, self.targets.to(device))

    @property
    def is_single_task(self) -> bool:
        return len(set(self.tasks)) == 1

    @property
    def task(self) -> str:
        """The task of a single-task batch; a mixed batch raises (use ``tasks``)."""
        if not self.is_single_task:
            raise ValueError(
                f"this batch mixes tasks {', '.join(sorted(set(self.tasks)))}; use batch.tasks "
                f"(one name per example)"
            )
        return self.tasks[0]


def collate_multitask(items: Sequence[MultiTaskItem]) -> MultiTaskBatch:
    """Collate ``MultiTaskItem``s: inputs and targets with torch's ``default_collate``."""
    if not items:
        raise ValueError("items is empty; a batch needs at least one MultiTaskItem")
    if not all(isinstance(item, MultiTaskItem) for item in items):
        raise TypeError(
            f"collate_multitask collates the MultiTaskItems of a MultiTaskDataset, got a {type(items[0]).__name__}; "
            f"index a MultiTaskDataset (or use multitask_loader)"
        )
    return MultiTaskBatch(
        tasks=tuple(item.task for item in items),
        indices=torch.tensor([item.index for item in items]),
        inputs=default_collate([item.input for item in items]),
        targets=default_collate([item.target for item in items]),
    )


def multitask_loader(
    dataset: MultiTaskDataset,
    batch_size: int,
    strategy: Strategy = "proportional",
    temperature: float = 2.0,
    mixed: bool = False,
    seed: int = 0,
    replacement: bool = False,
    num_batches: int | None = None,
    num_replicas: int = 1,
    rank: int = 0,
) -> DataLoader:
    """A ``DataLoader`` of ``MultiTaskBatch``es driven by a ``MultiTaskBatchSampler`` (same arguments)."""
    sampler = MultiTaskBatchSampler(
        dataset, batch_size, strategy, temperature, mixed, seed, replacement, num_batches, num_replicas, rank
    )
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_multitask)
