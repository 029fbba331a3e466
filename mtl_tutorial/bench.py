"""Benchmarks of the course's reference code against the library it is checked against.

    mtl-tutorial bench lora           our LoRA vs peft's LoRA, one training step on MiniLM
    mtl-tutorial bench aggregators    PCGrad, MGDA, CAGrad vs equal weighting, per training step
    mtl-tutorial bench solvers        the aggregators' weight solvers per call, T = 2, 4, 8, next to
                                      one forward + backward pass of chapter 06's model

``forward_latency`` times inference (chapter 08 compares a merged LoRA model with an unmerged one);
``examples_per_second`` times training set-ups side by side (chapter 04's schedules).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from mtl_tutorial.aggregation import MODES, GradientAggregation, cagrad_weights, mgda_weights, pcgrad_weights
from mtl_tutorial.backbone import count_parameters, load_backbone, mean_pool, quiet_transformers
from mtl_tutorial.data import (
    MultiTaskBatch, MultiTaskBatchSampler, MultiTaskDataset, collate_multitask, load_text_tasks,
)
from mtl_tutorial.lora import apply_lora, copy_to_peft, lora_layers
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


def main(argv: list[str] | None = None, prog: str = "python -m mtl_tutorial.bench") -> int:
    """``lora``: our LoRA step vs peft's; ``aggregators``: PCGrad/MGDA/CAGrad steps vs equal weighting;
    ``solvers``: the aggregators' weight solvers per call."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Time training steps on MiniLM: our LoRA vs peft's (lora), or each gradient "
        "aggregator vs equal weighting (aggregators); or the aggregators' weight solvers for "
        "T = 2, 4, 8 tasks next to a training pass of chapter 06's model (solvers).",
    )
    parser.add_argument("which", choices=("lora", "aggregators", "solvers"), help="what to time")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per example")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank r (lora only)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (lora only)")
    args = parser.parse_args(argv)
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
