"""Data-parallel training (1 vs 2 CPU processes on the same global batches) and float32 vs bf16 steps."""

from __future__ import annotations

import time
from typing import Mapping, Sequence

import torch

from mtl_tutorial import distributed
from mtl_tutorial.data import (
    MultiTaskDataset, multitask_loader,
)
from mtl_tutorial.training import train




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
