"""Benchmarks of the course's reference code against the library it is checked against.

    mtl-tutorial bench lora           our LoRA vs peft's LoRA, one training step on MiniLM
    mtl-tutorial bench aggregators    PCGrad, MGDA, CAGrad vs equal weighting, per training step
    mtl-tutorial bench solvers        the aggregators' weight solvers per call, T = 2, 4, 8, next to
                                      one forward + backward pass of chapter 06's model
    mtl-tutorial bench serve          mixed-task batches on one backbone vs merged per-task models vs
                                      adapter swapping, examples/s at T = 1, 4, 8 tasks
    mtl-tutorial bench ddp            data-parallel training, examples/s of 1 and 2 CPU processes for
                                      the same global batch (and float32 vs bf16 steps on CUDA)

``forward_latency`` times inference (chapter 08 compares a merged LoRA model with an unmerged one);
``examples_per_second`` times training set-ups side by side (chapter 04's schedules);
``training_step_times`` times encoders' steps on one batch (chapter 09); ``StepClock`` and
``training_step_memory`` give chapter 10's showdown its seconds and peak bytes per step, and
``serving_throughput`` its serving comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import time
import warnings
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from mtl_tutorial import distributed
from mtl_tutorial.aggregation import MODES, GradientAggregation, cagrad_weights, mgda_weights, pcgrad_weights
from mtl_tutorial.backbone import count_parameters, load_backbone, mean_pool, quiet_transformers
from mtl_tutorial.data import (
    MultiTaskBatch, MultiTaskBatchSampler, MultiTaskDataset, collate_multitask, load_text_tasks,
    multitask_loader,
)
from mtl_tutorial.lora import MultiTaskLoRAModel, apply_lora, copy_to_peft, lora_layers
from mtl_tutorial.merging import single_task_lora_model
from mtl_tutorial.models import HardSharingModel, TextEncoderTrunk, mlp, train_top_layers
from mtl_tutorial.runtime import seed_everything
from mtl_tutorial.training import LossFunction, train


def lora_step_time(
    batch_size: int = 32,
    seq_len: int = 64,
    r: int = 8,
    alpha: float = 16,
    target_modules: Sequence[str] = ("query", "value"),
    num_steps: int = 10,
    warmup: int = 3,
    backbone: nn.Module | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Median wall time of one training step (forward, backward, Adam step) of our LoRA and of
    peft's LoRA on copies of the same backbone, with the same A and B, batch and targets.

    backbone: a BERT-like encoder taking ``input_ids`` and ``attention_mask`` (default: the shipped
    MiniLM). The loss is the mean square of the mean-pooled output, a stand-in for a head's loss.
    Steps alternate between the two models (the order flips every step), so a machine that gets
    busier or quieter slows both alike. Returns ``ours_s``, ``peft_s`` (seconds per step),
    ``ratio`` = ours_s / peft_s, the trainable parameter counts and the sizes used.
    """
    from peft import LoraConfig, get_peft_model

    if num_steps < 1 or warmup < 0:
        raise ValueError(f"num_steps must be >= 1 and warmup >= 0, got {num_steps} and {warmup}")
    if backbone is None:
        backbone, _ = load_backbone()
    seed_everything(seed)
    ours = apply_lora(copy.deepcopy(backbone), target_modules, r=r, alpha=alpha)
    with quiet_transformers(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft calls a transformers method marked deprecated
        theirs = get_peft_model(
            copy.deepcopy(backbone), LoraConfig(r=r, lora_alpha=alpha, target_modules=list(target_modules))
        )
    for layer in lora_layers(ours).values():  # a nonzero B, as after some training
        nn.init.normal_(layer.B, std=0.02)
    copy_to_peft(ours, theirs)

    input_ids = torch.randint(1000, backbone.config.vocab_size, (batch_size, seq_len))
    attention_mask = torch.ones(batch_size, seq_len, dtype=torch.long)
    models = {"ours": ours.train(), "peft": theirs.train()}
    optimizers = {
        name: torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        for name, model in models.items()
    }

    def step(name: str) -> float:
        start = time.perf_counter()
        hidden = models[name](input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        loss = mean_pool(hidden, attention_mask).square().mean()
        optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[name].step()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"ours": [], "peft": []}
    for k in range(warmup + num_steps):
        for name in ("ours", "peft") if k % 2 == 0 else ("peft", "ours"):
            seconds = step(name)
            if k >= warmup:
                times[name].append(seconds)
    ours_s, peft_s = statistics.median(times["ours"]), statistics.median(times["peft"])
    return {
        "ours_s": ours_s,
        "peft_s": peft_s,
        "ratio": ours_s / peft_s,
        "trainable_ours": count_parameters(ours, trainable_only=True),
        "trainable_peft": count_parameters(theirs, trainable_only=True),
        "batch_size": batch_size,
        "seq_len": seq_len,
        "r": r,
        "num_steps": num_steps,
    }


@torch.no_grad()
def forward_latency(model: nn.Module, inputs: dict[str, torch.Tensor], repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time (seconds) of ``model(**inputs)`` in eval mode without gradients."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    was_training = model.training
    model.eval()
    times = []
    for k in range(warmup + repeats):
        start = time.perf_counter()
        model(**inputs)
        if k >= warmup:
            times.append(time.perf_counter() - start)
    model.train(was_training)
    return statistics.median(times)


def aggregator_step_times(
    model: nn.Module,
    batch: MultiTaskBatch,
    loss_fns: Mapping[str, LossFunction],
    methods: tuple[str, ...] = ("pcgrad", "mgda", "cagrad"),
    modes: tuple[str, ...] = MODES,
    num_steps: int = 3,
    repeats: int = 3,
    lr: float = 1e-4,
) -> dict[str, dict[str, float]]:
    """Seconds per training step of each aggregator and mode, relative to equal weighting.

    Every configuration trains ``model`` with ``training.train`` for ``num_steps`` steps on the same
    ``batch`` (a ``MultiTaskBatch``; mixed, so that every task has a loss), ``repeats`` times, the
    configurations taking turns so that a machine that gets busier slows them all alike; one
    untimed round warms up first. Returns ``{"equal": ..., "pcgrad/parameters": ..., ...}``, each
    ``{"seconds": median seconds per step, "ratio": seconds / equal's seconds}``.
    """
    if num_steps < 1 or repeats < 1:
        raise ValueError(f"num_steps and repeats must be >= 1, got {num_steps} and {repeats}")
    configurations: dict[str, tuple[str, str] | None] = {"equal": None}
    configurations |= {f"{method}/{mode}": (method, mode) for mode in modes for method in methods}
    times: dict[str, list[float]] = {name: [] for name in configurations}
    for round_ in range(repeats + 1):
        for name, configuration in configurations.items():
            weighting = GradientAggregation(model, *configuration) if configuration else None
            start = time.perf_counter()
            train(model, [batch], loss_fns, num_steps=num_steps, lr=lr, weighting=weighting, progress=False)
            if round_ > 0:
                times[name].append((time.perf_counter() - start) / num_steps)
            if weighting is not None:
                weighting.remove()
    equal = statistics.median(times["equal"])
    return {name: {"seconds": statistics.median(t), "ratio": statistics.median(t) / equal} for name, t in times.items()}


def text_benchmark_setup(
    top_layers: int = 2, batch_size: int = 32, max_length: int = 64, seed: int = 0
) -> tuple[HardSharingModel, MultiTaskBatch, dict[str, LossFunction]]:
    """The model and batch of ``mtl-tutorial bench``: (model, batch, loss_fns) for ``aggregator_step_times``.

    The shipped MiniLM as trunk with its top ``top_layers`` transformer layers trainable, a linear
    head per shipped text task, and one mixed batch of ``batch_size`` training texts drawn
    uniformly over the tasks (tokenised to at most ``max_length`` tokens).
    """
    seed_everything(seed)
    tasks = load_text_tasks(split="train")
    encoder, tokenizer = load_backbone()
    heads = {name: nn.Linear(encoder.config.hidden_size, task.num_classes) for name, task in tasks.items()}
    model = HardSharingModel(TextEncoderTrunk(train_top_layers(encoder, top_layers), tokenizer, max_length), heads)
    dataset = MultiTaskDataset({name: (task.texts, task.labels) for name, task in tasks.items()})
    indices = next(iter(MultiTaskBatchSampler(dataset, batch_size, strategy="uniform", mixed=True, seed=seed)))
    batch = collate_multitask([dataset[i] for i in indices])
    return model, batch, {name: nn.functional.cross_entropy for name in tasks}


def step_time_table(times: Mapping[str, Mapping[str, float]], num_tasks: int) -> str:
    """The result of ``aggregator_step_times`` as text, one line per configuration, beside the cost
    goals for a real trunk (MiniLM): at most T + 0.5 times equal weighting per parameter, at most 1.5
    times at the representation. A footnote says they are goals for a large model, not pass/fail
    checks: on a tiny model the fixed costs of a step decide the ratios."""
    goals = {"parameters": num_tasks + 0.5, "representation": 1.5}
    lines = [f"{'configuration':<24}{'ms/step':>10}{'× equal':>10}{'goal*':>9}"]
    for name, entry in times.items():
        mode = name.split("/")[1] if "/" in name else None
        goal = f"≤ {goals[mode]:.1f}" if mode else ""
        lines.append(f"{name:<24}{entry['seconds'] * 1000:>10.1f}{entry['ratio']:>10.2f}{goal:>9}")
    lines.append(f"* the cost goal on a real trunk such as MiniLM (T = {num_tasks}: T + 0.5 per parameter, 1.5 at the "
                 f"representation), not a check: on a tiny model a step's fixed costs decide the ratios")
    return "\n".join(lines)


def examples_per_second(
    runs: Mapping[str, tuple[nn.Module, Iterable[MultiTaskBatch]]],
    loss_fns: Mapping[str, LossFunction],
    num_steps: int = 5,
    rounds: int = 3,
    lr: float = 1e-3,
) -> dict[str, dict[str, float]]:
    """Training throughput of several set-ups measured side by side (chapter 04's schedules).

    runs: name -> (model, loader). The first ``num_steps`` batches of each loader are taken once
    (so data loading is not timed); each round trains a copy of every model on its batches with
    ``training.train``, the set-ups taking turns in an order that rotates every round, after one
    untimed warm-up round. Returns name -> ``{"examples_per_s", "seconds_per_step",
    "examples_per_step"}``, medians over ``rounds``.
    """
    if num_steps < 1 or rounds < 1:
        raise ValueError(f"num_steps and rounds must be >= 1, got {num_steps} and {rounds}")
    if not runs:
        raise ValueError("runs is empty; pass {name: (model, loader)}")
    prepared = {}
    for name, (model, loader) in runs.items():
        batches = [batch for batch, _ in zip(loader, range(num_steps))]
        if len(batches) < num_steps:
            raise ValueError(f"the loader of {name!r} yielded {len(batches)} batches; it needs at least num_steps = {num_steps}")
        prepared[name] = (copy.deepcopy(model), batches, sum(len(batch.tasks) for batch in batches) / num_steps)
    names = list(prepared)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds + 1):
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            model, batches, _ = prepared[name]
            start = time.perf_counter()
            train(model, batches, loss_fns, num_steps=num_steps, lr=lr, progress=False)
            if round_ > 0:
                times[name].append((time.perf_counter() - start) / num_steps)
    results = {}
    for name in names:
        seconds, per_step = statistics.median(times[name]), prepared[name][2]
        results[name] = {"examples_per_s": per_step / seconds, "seconds_per_step": seconds, "examples_per_step": per_step}
    return results


def training_step_times(
    models: Mapping[str, nn.Module],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    num_steps: int = 5,
    warmup: int = 2,
    lr: float = 1e-4,
) -> dict[str, float]:
    """Median seconds of one training step (forward, backward, Adam step over the trainable
    parameters) of each model on the same batch: ``{name: seconds}``.

    models: name -> BERT-like encoder called as ``model(input_ids=..., attention_mask=...)``; the loss
    is the mean square of the mean-pooled output, a stand-in for a head's loss (as in
    ``lora_step_time``). The models take turns each step (the order rotates), so a machine that gets
    busier or quieter slows all of them alike. The steps train the models (pass copies); they run in
    train mode, and their mode is restored afterwards.
    """
    if num_steps < 1 or warmup < 0:
        raise ValueError(f"num_steps must be >= 1 and warmup >= 0, got {num_steps} and {warmup}")
    optimizers = {}
    for name, model in models.items():
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError(f"model {name!r} has no trainable parameters")
        optimizers[name] = torch.optim.Adam(trainable, lr=lr)
    was_training = {name: model.training for name, model in models.items()}
    names = list(models)
    times: dict[str, list[float]] = {name: [] for name in names}
    for k in range(warmup + num_steps):
        for name in names[k % len(names):] + names[: k % len(names)]:
            model = models[name].train()
            start = time.perf_counter()
            hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            loss = mean_pool(hidden, attention_mask).square().mean()
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[name].step()
            if k >= warmup:
                times[name].append(time.perf_counter() - start)
    for name, model in models.items():
        model.train(was_training[name])
    return {name: statistics.median(values) for name, values in times.items()}


class StepClock:
    """Seconds per training step of any loop, read off the optimizer: ``with StepClock(optimizer) as
    clock: train(...)``, then ``clock.median()``.

    ``clock.seconds[k]`` is the time between the ends of optimizer steps k and k + 1 (for k = 0: from
    entering the block): a whole step (batch, forward, backward, update), nothing outside it.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer, self.ends = optimizer, []

    def __enter__(self) -> StepClock:
        self.ends = [time.perf_counter()]
        self._handle = self.optimizer.register_step_post_hook(lambda *_: self.ends.append(time.perf_counter()))
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()

    @property
    def seconds(self) -> list[float]:
        return [end - start for start, end in zip(self.ends, self.ends[1:])]

    def median(self, skip: int = 1) -> float:
        """Median seconds per step, leaving out the first ``skip`` steps (warm-up)."""
        steps = self.seconds[skip:] or self.seconds
        if not steps:
            raise ValueError("no optimizer step was taken inside the StepClock block")
        return statistics.median(steps)


def state_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers (its weights in memory), a shared tensor counted once."""
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total


@contextlib.contextmanager
def _no_native_stderr() -> Iterator[None]:
    """Silence what C++ code writes to file descriptor 2 (the profiler's start/stop lines, which no
    setting turns off); Python exceptions still propagate."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def training_step_memory(model: nn.Module, batch: MultiTaskBatch, loss_fns: Mapping[str, LossFunction]) -> dict:
    """Peak memory of the first training step (forward, backward, Adam step) of a fresh copy of
    ``model`` on ``batch``: its weights (``state_bytes``) plus the peak of what the step allocates
    on top (activations, gradients, Adam's two moments, temporaries).

    On CUDA the allocator's peak (``torch.cuda.max_memory_allocated``); on the CPU the torch
    profiler's allocation events (every tensor torch allocates and frees, summed in time order).
    Returns ``{"bytes": int, "measure": "cuda max_memory_allocated" | "cpu torch profiler"}``.
    """
    copy_ = copy.deepcopy(model)
    trainable = [p for p in copy_.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"this {type(model).__name__} has no trainable parameters; nothing to step")
    optimizer = torch.optim.Adam(trainable)
    device = trainable[0].device
    weights = state_bytes(copy_)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        train(copy_, [batch], loss_fns, 1, optimizer=optimizer, progress=False)
        torch.cuda.synchronize(device)
        return {"bytes": weights + torch.cuda.max_memory_allocated(device) - before,
                "measure": "cuda max_memory_allocated"}
    from torch.profiler import ProfilerActivity, profile

    with _no_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        train(copy_, [batch], loss_fns, 1, optimizer=optimizer, progress=False)
    events = sorted((e.start_ns(), e.nbytes()) for e in profiler.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return {"bytes": weights + peak, "measure": "cpu torch profiler"}


def serving_setup(
    num_tasks: int, r: int = 8, max_length: int = 32, num_texts: int = 512, seed: int = 0,
    backbone: tuple[nn.Module, object] | None = None,
) -> tuple[MultiTaskLoRAModel, list[str]]:
    """A multi-task LoRA model with ``num_tasks`` tasks ("task0", ...) on the shipped MiniLM (LoRA on
    query and value, B ~ N(0, 0.02²) so ΔW ≠ 0, a 2-class linear head per task) and ``num_texts``
    test glosses of the shipped supersense task: what ``serving_throughput`` serves. Throughput does
    not depend on what the weights learned, so none is trained."""
    encoder, tokenizer = backbone if backbone is not None else load_backbone()
    seed_everything(seed)
    tasks = [f"task{t}" for t in range(num_tasks)]
    heads = {task: nn.Linear(encoder.config.hidden_size, 2) for task in tasks}
    model = MultiTaskLoRAModel(TextEncoderTrunk(copy.deepcopy(encoder), tokenizer, max_length), heads, r=r)
    with torch.no_grad():
        for layer in lora_layers(model.trunk).values():
            for B in layer.B.values():
                B.normal_(std=0.02)
    texts = load_text_tasks(["supersense"], split="test", max_per_task=num_texts, seed=seed)["supersense"].texts
    return model.eval(), list(texts)


class _SwappingServer:
    """One merged copy of the backbone; serving task t first rewrites every LoRA-targeted weight to
    W0 + ΔW_t (the cost of swapping merged weights between single-task batches)."""

    def __init__(self, model: MultiTaskLoRAModel) -> None:
        self.source, self.active = model, None
        self.model = single_task_lora_model(model, model.tasks[0])
        self.model.heads = nn.ModuleDict(copy.deepcopy(dict(model.heads)))
        self.targets = {name: self.model.trunk.get_submodule(name) for name in lora_layers(model.trunk)}
        self.originals = {name: layer.base.weight.detach().clone() for name, layer in lora_layers(model.trunk).items()}

    def __call__(self, texts: list[str], task: str) -> torch.Tensor:
        if task != self.active:
            with torch.no_grad():
                for name, linear in self.targets.items():
                    layer = self.source.trunk.get_submodule(name)
                    linear.weight.copy_(self.originals[name]).addmm_(layer.B[task], layer.A[task], alpha=layer.scaling)
            self.active = task
        return self.model(texts, task)

    def memory_bytes(self) -> int:
        adapters = sum(t.numel() * t.element_size() for task in self.source.tasks
                       for t in self.source.task_peft_state_dict(task).values())
        return state_bytes(self.model) + adapters + sum(w.numel() * w.element_size() for w in self.originals.values())


@torch.no_grad()
def serving_throughput(
    model: MultiTaskLoRAModel, texts: Sequence[str], batch_size: int = 32, num_batches: int = 4, rounds: int = 3,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Examples per second of three ways to serve mixed-task traffic with per-task LoRA, side by side.

    Traffic: ``num_batches`` batches of ``batch_size`` requests, each request's task drawn uniformly
    from ``model.tasks`` (seeded) and its text from ``texts``. The ways:

    - ``"mixed batch"``: one backbone, unmerged LoRA, every batch in one pass (each example routed);
    - ``"merged per task"``: one merged model per task (W0 + ΔW_t, T backbone copies); a batch is
      split by task, one pass per task;
    - ``"swapping"``: one merged copy whose weights are rewritten to W0 + ΔW_t before each task's part;
    - ``"ceiling"``: one merged single-task model on single-task batches of the same size: what one
      backbone pass per batch costs at best.

    The set-ups take turns in an order that rotates every round, after one untimed warm-up round.
    Returns name -> ``{"examples_per_s": median, "memory_bytes": weights held}``.
    """
    if batch_size < 1 or num_batches < 1 or rounds < 1:
        raise ValueError(f"batch_size, num_batches and rounds must be >= 1, got {batch_size}, {num_batches}, {rounds}")
    generator = torch.Generator().manual_seed(seed)
    tasks = model.tasks
    batches = []
    for _ in range(num_batches):
        picks = torch.randint(len(texts), (batch_size,), generator=generator).tolist()
        names = [tasks[i] for i in torch.randint(len(tasks), (batch_size,), generator=generator).tolist()]
        batches.append(([texts[i] for i in picks], names))
    merged = {task: single_task_lora_model(model, task).eval() for task in tasks}
    swapping = _SwappingServer(model)

    def split_by_task(serve: Callable[[list[str], str], torch.Tensor]) -> Callable[[list[str], list[str]], None]:
        def run(batch_texts: list[str], names: list[str]) -> None:
            for task in dict.fromkeys(names):
                serve([text for text, name in zip(batch_texts, names) if name == task], task)
        return run

    setups: dict[str, Callable[[list[str], list[str]], object]] = {
        "mixed batch": lambda batch_texts, names: model(batch_texts, names),
        "merged per task": split_by_task(lambda batch_texts, task: merged[task](batch_texts, task)),
        "swapping": split_by_task(swapping),
        "ceiling": lambda batch_texts, names: merged[tasks[0]](batch_texts, tasks[0]),
    }
    names_ = list(setups)
    times: dict[str, list[float]] = {name: [] for name in names_}
    for round_ in range(rounds + 1):
        for name in names_[round_ % len(names_):] + names_[: round_ % len(names_)]:
            start = time.perf_counter()
            for batch_texts, names in batches:
                setups[name](batch_texts, names)
            if round_ > 0:
                times[name].append(time.perf_counter() - start)
    memory = {"mixed batch": state_bytes(model), "merged per task": sum(state_bytes(m) for m in merged.values()),
              "swapping": swapping.memory_bytes(), "ceiling": state_bytes(merged[tasks[0]])}
    return {name: {"examples_per_s": batch_size * num_batches / statistics.median(times[name]),
                   "memory_bytes": memory[name]} for name in names_}


def serving_table(results: Mapping[int, Mapping[str, Mapping[str, float]]]) -> str:
    """``{T: serving_throughput(...)}`` as text: examples/s, the ratio to the ceiling, and weights in MB."""
    lines = [f"{'T':>3}  {'set-up':<16}{'examples/s':>12}{'× ceiling':>11}{'weights MB':>12}"]
    for num_tasks, result in results.items():
        ceiling = result["ceiling"]["examples_per_s"]
        for name, entry in result.items():
            lines.append(f"{num_tasks:>3}  {name:<16}{entry['examples_per_s']:>12.1f}{entry['examples_per_s'] / ceiling:>11.2f}"
                         f"{entry['memory_bytes'] / 2**20:>12.1f}")
    return "\n".join(lines)


def _seconds_per_call(fn: Callable[[], object], calls: int, rounds: int = 5) -> float:
    """Median over ``rounds`` of the mean wall time of ``calls`` calls of fn (after one warm-up call)."""
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def solver_times(
    num_tasks: Sequence[int] = (2, 4, 8), calls: int = 200, batch_size: int = 64, seed: int = 0
) -> dict[str, dict[int, float] | float]:
    """Seconds per call of the aggregators' weight solvers, beside one training pass of chapter 06's model.

    For each T, a Gram matrix of T random gradients (ill-conditioned: row norms from 0.1 to 10) is
    handed to ``pcgrad_weights``, ``mgda_weights`` (exact min-norm solver) and ``cagrad_weights``
    (c = 0.5). The reference is forward + backward of chapter 06's model (``mlp(384, 256)`` trunk,
    four linear heads) on a mixed batch of ``batch_size`` frozen features. Returns
    ``{"pcgrad": {T: s}, "mgda": {T: s}, "cagrad": {T: s}, "forward_backward": s}``.
    """
    generator = torch.Generator().manual_seed(seed)
    grams = {}
    for t in num_tasks:
        grads = torch.randn(t, 1000, generator=generator, dtype=torch.float64)
        grads = grads * torch.logspace(-1, 1, t, dtype=torch.float64)[:, None]
        grams[t] = grads @ grads.T
    solvers = {"pcgrad": pcgrad_weights, "mgda": mgda_weights, "cagrad": cagrad_weights}
    result: dict[str, dict[int, float] | float] = {
        name: {t: _seconds_per_call(lambda: solve(grams[t]), calls) for t in num_tasks}
        for name, solve in solvers.items()
    }
    classes = {"sentiment": 3, "condition": 5, "supersense": 11, "pos": 4}  # chapter 06's tasks
    model = HardSharingModel(mlp(384, 256), {task: nn.Linear(256, k) for task, k in classes.items()})
    features = torch.randn(batch_size, 384, generator=generator)
    names = [list(classes)[i % len(classes)] for i in range(batch_size)]
    labels = {task: torch.zeros(sum(n == task for n in names), dtype=torch.long) for task in classes}

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        outputs = model(features, names)
        sum(nn.functional.cross_entropy(out.outputs, labels[task]) for task, out in outputs.items()).backward()

    result["forward_backward"] = _seconds_per_call(forward_backward, max(calls // 10, 1))
    return result


def solver_time_table(times: Mapping[str, dict[int, float] | float]) -> str:
    """The result of ``solver_times`` as text: µs per call per solver and T, and the training pass."""
    num_tasks = list(times["mgda"])
    lines = [f"{'solver':<10}" + "".join(f"{f'T = {t}':>12}" for t in num_tasks) + "   (µs per call)"]
    for name in ("pcgrad", "mgda", "cagrad"):
        lines.append(f"{name:<10}" + "".join(f"{times[name][t] * 1e6:>12.1f}" for t in num_tasks))
    lines.append(f"chapter 06's model, forward + backward of one batch: {times['forward_backward'] * 1e6:.1f} µs")
    return "\n".join(lines)


def _ddp_step_times_on_this_rank(
    batch_sizes: Sequence[int], num_steps: int, warmup: int, hidden: Sequence[int]
) -> dict[int, float]:
    """One rank of ``ddp_throughput``: seconds per training step at each global batch size."""
    world, rank = distributed.world_size(), distributed.rank()
    times = {}
    for batch_size in batch_sizes:
        model, train_data, _, loss_fns = distributed.correlated_tasks_setup(hidden=hidden)
        loader = multitask_loader(MultiTaskDataset(train_data), batch_size, strategy="uniform", seed=0,
                                  replacement=True, num_batches=warmup + num_steps, num_replicas=world, rank=rank)
        batches = list(loader)
        train(model, batches[:warmup], loss_fns, num_steps=warmup, progress=False)
        if world > 1:
            torch.distributed.barrier()
        start = time.perf_counter()
        train(model, batches[warmup:], loss_fns, num_steps=num_steps, progress=False)
        times[batch_size] = (time.perf_counter() - start) / num_steps
    return times


def ddp_throughput(
    batch_sizes: Sequence[int] = (32, 256, 1024),
    world_sizes: Sequence[int] = (1, 2),
    num_steps: int = 10,
    warmup: int = 3,
    hidden: Sequence[int] = (512, 512),
    threads_per_process: int = 1,
) -> dict[int, dict[int, dict[str, float]]]:
    """Examples per second of data-parallel training on the CPU for W processes, same global batch.

    Each W in ``world_sizes`` is one ``distributed.run_local`` of W gloo processes with
    ``threads_per_process`` torch threads each (torchrun's default, 1), training
    ``distributed.correlated_tasks_setup(hidden=hidden)`` with ``training.train`` on single-task
    global batches of each size (each rank its shard, the same task on every rank): ``warmup``
    untimed steps (DDP's set-up among them), then ``num_steps`` timed; a step takes the slowest
    rank's time. Returns {batch_size: {W: {"seconds_per_step",
    "examples_per_s", "speedup"}}}, speedup = examples/s ÷ that of the first W.
    """
    if num_steps < 1 or warmup < 1:
        raise ValueError(f"num_steps and warmup must be >= 1, got {num_steps} and {warmup}")
    seconds = {}
    for world in world_sizes:
        per_rank = distributed.run_local(_ddp_step_times_on_this_rank, world, tuple(batch_sizes), num_steps, warmup,
                                         tuple(hidden), threads_per_process=threads_per_process)
        seconds[world] = {b: max(times[b] for times in per_rank) for b in batch_sizes}
    return {
        b: {w: {"seconds_per_step": seconds[w][b], "examples_per_s": b / seconds[w][b],
                "speedup": seconds[world_sizes[0]][b] / seconds[w][b]} for w in world_sizes}
        for b in batch_sizes
    }


def ddp_table(results: Mapping[int, Mapping[int, Mapping[str, float]]]) -> str:
    """The result of ``ddp_throughput`` as text: one line per global batch size and process count."""
    first = next(iter(next(iter(results.values()))))
    lines = [f"{'global batch':>12}{'processes':>11}{'ms/step':>10}{'examples/s':>12}{f'× {first} process':>14}"]
    for batch_size, by_world in results.items():
        for world, entry in by_world.items():
            lines.append(f"{batch_size:>12}{world:>11}{entry['seconds_per_step'] * 1000:>10.1f}"
                         f"{entry['examples_per_s']:>12.0f}{entry['speedup']:>14.2f}")
    return "\n".join(lines)


def precision_step_times(
    device: torch.device,
    precisions: Sequence[str] = ("fp32", "bf16"),
    batch_size: int = 1024,
    num_steps: int = 10,
    warmup: int = 3,
    hidden: Sequence[int] = (2048, 2048),
) -> dict[str, dict[str, float]]:
    """Seconds per training step of one process at each ``train(precision=...)``, on ``device``.

    ``distributed.correlated_tasks_setup(hidden=hidden)``, mixed batches of ``batch_size``; ``warmup``
    untimed steps, then ``num_steps`` timed (``train`` reads every step's loss, which waits for the
    GPU). Returns {precision: {"seconds_per_step", "ratio"}}, ratio = seconds ÷ the first precision's.
    """
    if num_steps < 1 or warmup < 0:
        raise ValueError(f"num_steps must be >= 1 and warmup >= 0, got {num_steps} and {warmup}")
    seconds = {}
    for precision in precisions:
        model, train_data, _, loss_fns = distributed.correlated_tasks_setup(hidden=hidden)
        batches = list(multitask_loader(MultiTaskDataset(train_data), batch_size, strategy="uniform", mixed=True,
                                        seed=0, replacement=True, num_batches=warmup + num_steps))
        settings = dict(device=device, precision=precision, progress=False)
        if warmup:
            train(model, batches[:warmup], loss_fns, num_steps=warmup, **settings)
        start = time.perf_counter()
        train(model, batches[warmup:], loss_fns, num_steps=num_steps, **settings)
        seconds[precision] = (time.perf_counter() - start) / num_steps
    first = seconds[precisions[0]]
    return {p: {"seconds_per_step": s, "ratio": s / first} for p, s in seconds.items()}


def precision_table(times: Mapping[str, Mapping[str, float]]) -> str:
    """The result of ``precision_step_times`` as text: ms per step and the ratio to the first precision."""
    first = next(iter(times))
    lines = [f"{'precision':<10}{'ms/step':>10}{f'× {first}':>10}"]
    lines += [f"{p:<10}{e['seconds_per_step'] * 1000:>10.2f}{e['ratio']:>10.2f}" for p, e in times.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "python -m mtl_tutorial.bench") -> int:
    """``lora``: our LoRA step vs peft's; ``aggregators``: PCGrad/MGDA/CAGrad steps vs equal weighting;
    ``solvers``: the aggregators' weight solvers per call; ``serve``: mixed-batch serving vs merged
    models vs adapter swapping at T = 1, 4, 8 tasks."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Time training steps on MiniLM: our LoRA vs peft's (lora), or each gradient "
        "aggregator vs equal weighting (aggregators); or the aggregators' weight solvers for "
        "T = 2, 4, 8 tasks next to a training pass of chapter 06's model (solvers); or serving T = 1, 4, 8 "
        "tasks' LoRA in mixed batches vs merged per-task models vs adapter swapping (serve).",
    )
    parser.add_argument("which", choices=("lora", "aggregators", "solvers", "serve", "ddp"), help="what to time")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per example")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank r (lora only)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (lora only)")
    args = parser.parse_args(argv)
    if args.which == "ddp":
        batch_sizes = tuple(sorted({args.batch_size, 256, 1024}))
        print(f"Data-parallel training on the CPU (gloo): chapter 05's correlated tasks, mlp(100, 512, 512) trunk, "
              f"single-task global batches of {', '.join(map(str, batch_sizes))}, {args.steps} timed steps, "
              f"1 torch thread per process, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(ddp_table(ddp_throughput(batch_sizes, num_steps=args.steps)))
        if torch.cuda.is_available():
            print(f"One process on {torch.cuda.get_device_name()}, global batch 1024, mlp(100, 2048, 2048) trunk:")
            print(precision_table(precision_step_times(torch.device("cuda"), num_steps=args.steps)))
        else:
            print("no CUDA GPU: float32 vs bf16 step times are measured on CUDA only")
        return 0
    if args.which == "serve":
        backbone = load_backbone()
        results = {}
        for num_tasks in (1, 4, 8):
            model, texts = serving_setup(num_tasks, r=args.rank, max_length=args.seq_len, backbone=backbone)
            results[num_tasks] = serving_throughput(model, texts, batch_size=args.batch_size, num_batches=args.steps)
        print(f"Serving mixed-task traffic with per-task LoRA (r = {args.rank}, query and value), MiniLM, batches of "
              f"{args.batch_size} glosses (at most {args.seq_len} tokens), {args.steps} batches per round, torch "
              f"threads {torch.get_num_threads()}")
        print(serving_table(results))
        at_8 = {name: entry["examples_per_s"] for name, entry in results[8].items()}
        print(f"T = 8: mixed batch / ceiling = {at_8['mixed batch'] / at_8['ceiling']:.2f} (goal ≥ 0.80); "
              f"mixed batch / swapping = {at_8['mixed batch'] / at_8['swapping']:.2f} (goal > 1); "
              f"mixed batch / merged per task = {at_8['mixed batch'] / at_8['merged per task']:.2f}")
        return 0
    if args.which == "solvers":
        print(f"Gradient-aggregation weight solvers (float64 Gram matrices), torch threads {torch.get_num_threads()}")
        print(solver_time_table(solver_times()))
        return 0
    if args.which == "aggregators":
        model, batch, loss_fns = text_benchmark_setup(batch_size=args.batch_size, max_length=args.seq_len)
        times = aggregator_step_times(model, batch, loss_fns, num_steps=args.steps)
        print(f"Gradient aggregation, MiniLM (top 2 layers trained), mixed batch of {args.batch_size}, "
              f"{len(loss_fns)} tasks, torch threads {torch.get_num_threads()}")
        print(step_time_table(times, num_tasks=len(loss_fns)))
        return 0
    result = lora_step_time(
        batch_size=args.batch_size, seq_len=args.seq_len, r=args.rank, num_steps=args.steps, warmup=args.warmup
    )
    print(f"LoRA training step, MiniLM, batch {result['batch_size']} x {result['seq_len']} tokens, "
          f"r = {result['r']}, targets query and value, median of {result['num_steps']} steps, "
          f"torch threads {torch.get_num_threads()}")
    print(f"  ours  {result['ours_s'] * 1000:8.1f} ms   ({result['trainable_ours']:,} trainable parameters)")
    print(f"  peft  {result['peft_s'] * 1000:8.1f} ms   ({result['trainable_peft']:,} trainable parameters)")
    print(f"  ours / peft = {result['ratio']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
