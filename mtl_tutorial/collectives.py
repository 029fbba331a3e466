"""Ranks and collectives of a data-parallel process group: what the training loop needs to train on
W processes, one floor below it (``training`` imports this; ``mtl_tutorial.distributed``, which starts
the processes and runs the experiment, sits above the loop and re-exports these names).

Every function is the identity, or a no-op, when there is no process group (W = 1), so the loop calls
them unconditionally. ``global_task_losses`` turns a rank's shard losses into the global batch's
(``mtl_tutorial.distributed``'s module docstring has the derivation); ``average_gradients`` and
``all_reduce_mean`` average what DDP does not.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def world_size() -> int:
    """W, the number of processes in the default process group; 1 when there is none."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank r in 0..W-1; 0 when there is no process group. Rank 0 prints and writes files."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Σ_r tensor_r over the W ranks: a new tensor, the same on every rank (``tensor`` itself when W = 1)."""
    if world_size() == 1:
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """(1/W) Σ_r tensor_r over the W ranks: a new tensor, the same on every rank (``tensor`` itself when W = 1)."""
    return all_reduce_sum(tensor) / world_size() if world_size() > 1 else tensor


def average_gradients(parameters: Iterable[torch.Tensor]) -> None:
    """p.grad ← (1/W) Σ_r p.grad_r for every parameter, in place (one all-reduce of all of them).

    A rank without a gradient for p adds zeros; a parameter that has no gradient on any rank keeps
    ``grad=None``, so the optimizer skips it, as it would in one process. A no-op when W = 1.
    """
    parameters = list(parameters)
    if world_size() == 1 or not parameters:
        return
    flags = torch.tensor([p.grad is not None for p in parameters], dtype=torch.float32, device=parameters[0].device)
    present = [p for p, count in zip(parameters, all_reduce_sum(flags).tolist()) if count > 0]
    if not present:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in present])
    for parameter, chunk in zip(present, all_reduce_mean(flat).split([p.numel() for p in present])):
        parameter.grad = chunk.view_as(parameter)


def broadcast_parameters(parameters: Iterable[torch.Tensor]) -> None:
    """Give every rank rank 0's values of ``parameters``, in place (DDP does this for the model)."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for parameter in parameters:
            dist.broadcast(parameter.data, src=0)


def data_parallel(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    """``model`` (already on ``device``) wrapped in DDP, rank 0's parameters copied to every rank.

    ``find_unused_parameters=True``: a step may leave some heads without a gradient (module docstring).
    """
    device_ids = None
    if device.type == "cuda":
        device_ids = [torch.cuda.current_device() if device.index is None else device.index]
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)


def global_task_losses(
    losses: Mapping[str, torch.Tensor], shard_tasks: Sequence[str], tasks: Sequence[str]
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The global batch's task losses, from this rank's: ``({t: L̃_tr}, {t: L_t})`` (module docstring).

    losses[t] = L_tr, the mean loss of this rank's examples of task t; shard_tasks: the task of each
    of this rank's examples (``batch.tasks``), which gives n_tr; tasks: every task name (the same
    list on every rank). One small all-reduce gives N_t, L_t and the order of the result: the tasks
    with N_t > 0 by their first example in the global batch, as one process would order them, when
    rank r's shard holds positions r, r + W, ... (``MultiTaskBatchSampler``); any order agrees
    across ranks. L̃_tr has the value L_t and the gradient (W n_tr / N_t) ∇L_tr. A task this rank
    has no example of gets L_t plus zero times one of its losses: a zero gradient that still reaches
    the graph, so that a weighting can differentiate every task's loss on every rank alike.
    """
    if not losses:
        raise ValueError("this rank's shard has no task loss; every rank needs at least one example per batch")
    world, anchor = world_size(), next(iter(losses.values()))
    # rows: n_tr, n_tr L_tr, then one row per rank with the global position of its first example of t
    local = torch.zeros(2 + world, len(tasks), dtype=torch.float64, device=anchor.device)
    local[2 + rank()] = math.inf  # no example of the task
    for k, task in enumerate(tasks):
        if task in losses:
            local[0, k] = shard_tasks.count(task)
            local[1, k] = local[0, k] * losses[task].detach().double()
            local[2 + rank(), k] = shard_tasks.index(task) * world + rank()
    totals = all_reduce_sum(local)
    counts, sums, first = totals[0].tolist(), totals[1].tolist(), totals[2:].min(dim=0).values.tolist()
    combined, values = {}, {}
    for k in sorted((k for k in range(len(tasks)) if counts[k] > 0), key=lambda k: first[k]):
        task = tasks[k]
        values[task] = sums[k] / counts[k]
        local_loss = losses.get(task, anchor)
        scale = world * local[0, k].item() / counts[k]
        combined[task] = values[task] + scale * (local_loss - local_loss.detach())
    return combined, values
