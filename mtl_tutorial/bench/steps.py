"""Training-step and inference timing: our LoRA vs peft's, aggregators vs equal weighting, encoders' steps
on one batch, examples per second of training set-ups, and a training step's seconds and peak memory."""

from __future__ import annotations

import contextlib
import copy
import os
import statistics
import sys
import time
import warnings
from typing import Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from mtl_tutorial.aggregation import MODES, GradientAggregation
from mtl_tutorial.backbone import count_parameters, load_backbone, mean_pool, quiet_transformers
from mtl_tutorial.data import (
    MultiTaskBatch, MultiTaskBatchSampler, MultiTaskDataset, collate_multitask, load_text_tasks,
)
from mtl_tutorial.lora import apply_lora, copy_to_peft, lora_layers
from mtl_tutorial.models import HardSharingModel, TextEncoderTrunk, train_top_layers
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


def training_step_memory(model: nn.Module, batch: MultiTaskBatch, loss_fns: Mapping[str, LossFunction],
                         frozen_modules: str = "eval") -> dict:
    """Peak memory of the first training step (forward, backward, Adam step) of a fresh copy of
    ``model`` on ``batch``: its weights (``state_bytes``) plus the peak of what the step allocates
    on top (activations, gradients, Adam's two moments, temporaries). frozen_modules: as the run
    it measures trains (``train``'s option: dropout in frozen layers allocates masks and draws
    random numbers, so a PEFT run measured with "train" must be measured so).

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
        train(copy_, [batch], loss_fns, 1, optimizer=optimizer, progress=False, frozen_modules=frozen_modules)
        torch.cuda.synchronize(device)
        return {"bytes": weights + torch.cuda.max_memory_allocated(device) - before,
                "measure": "cuda max_memory_allocated"}
    from torch.profiler import ProfilerActivity, profile

    with _no_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        train(copy_, [batch], loss_fns, 1, optimizer=optimizer, progress=False, frozen_modules=frozen_modules)
    events = sorted((e.start_ns(), e.nbytes()) for e in profiler.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return {"bytes": weights + peak, "measure": "cpu torch profiler"}
