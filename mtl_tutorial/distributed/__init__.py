"""Data-parallel training: ``training.train`` on W processes, each with a shard of every batch.

Under ``torchrun`` (one machine or several: README, "Scale out") every process, rank r of W, holds
a copy of the model and trains on its shard of each global batch (the sampler's
``num_replicas=W, rank=r``: examples r, r + W, r + 2W, ... of the batch). ``train`` sees the process
group and makes one step on W ranks equal to one step of one process on the whole batch:

    N_t = Σ_r n_tr,   L_t = Σ_r n_tr L_tr / N_t              one all-reduce of counts and loss sums
    L̃_tr = L_t + (W n_tr / N_t) (L_tr - sg(L_tr))            sg: stop-gradient; the value is L_t
    (1/W) Σ_r ∇L̃_tr = Σ_r (n_tr / N_t) ∇L_tr = ∇L_t           the mean over ranks: DDP's all-reduce

n_tr is rank r's number of examples of task t and L_tr their mean loss (loss functions must average
over examples, PyTorch's default ``reduction="mean"``). Every weighting gets the global losses L_t on
every rank, so it returns the same λ_t everywhere, and for any weighting f the rank-averaged gradient
of f(L̃) is Σ_t ∂f/∂L_t ∇L_t, the whole batch's, even when shards hold unequal numbers of a task.

The engine: the model is wrapped in PyTorch's ``DistributedDataParallel`` (``data_parallel``). DDP
broadcasts rank 0's parameters at the start and averages gradients in buckets while backward is
still running, so communication overlaps computation: that is why we use it rather than averaging
``.grad`` by hand after backward, which gives the same numbers, simpler, but later.
``find_unused_parameters=True``, because a single-task batch leaves the other tasks' heads without a
gradient (they keep ``grad=None`` on every rank, as in one process; with mixed batches that reach
every head DDP warns that it found no unused parameter, which is then true and harmless).
DDP averages only what ``backward()`` computes; the rest is averaged here, by hand:

- a weighting's own parameters (uncertainty's s_t, GradNorm's θ): ``average_gradients``. Their
  gradients depend on the global L_t only, so they agree already; averaging keeps it so.
- the per-task gradients that GradNorm and the aggregators take with ``torch.autograd.grad``:
  ``all_reduce_mean`` before the norms and the Gram matrix, so that α is the same on every rank.
  ``train`` hands it to the weighting as ``reduce=``: the methods never import this package.
- every gradient of a step whose weighting writes the gradients itself (an aggregator): DDP's own
  synchronisation is off for such steps (``no_sync``), ``average_gradients`` does it after.

Layout: ranks and collectives; a shard's losses (``global_task_losses``); starting processes
(``init_distributed`` under torchrun, ``run_local`` for tests, benchmarks and notebooks). The
experiment lives in ``distributed.experiment`` (``correlated_tasks_setup``, also importable from
here), the entry point ``python -m mtl_tutorial.distributed`` in ``distributed/__main__.py``
(``main``): it imports the loop, which imports this package, so this package never imports it.
"""

from __future__ import annotations

import math
import os
import pickle
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mtl_tutorial.distributed.experiment import correlated_tasks_setup  # noqa: F401  (its home before)
from mtl_tutorial.runtime import get_device

T = TypeVar("T")


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


def init_distributed() -> torch.device:
    """Join the process group that torchrun describes; returns the device this process trains on.

    torchrun gives every process RANK, LOCAL_RANK (its rank on this machine), WORLD_SIZE,
    MASTER_ADDR and MASTER_PORT; the group is made from them (``init_method="env://"``): backend
    nccl and device cuda:LOCAL_RANK when ``runtime.get_device()`` is CUDA (one GPU per process),
    gloo and the CPU otherwise. Without torchrun (no RANK), nothing is joined: W = 1, the device
    is ``get_device()``.
    """
    device = get_device()
    if "RANK" not in os.environ:
        return device
    if device.type == "cuda":
        local_rank, gpus = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
        if local_rank >= gpus:
            raise RuntimeError(
                f"LOCAL_RANK={local_rank} but this machine has {gpus} GPU(s): start at most one process per GPU "
                f"(torchrun --nproc-per-node {gpus}), or train on the CPU with MTL_TUTORIAL_DEVICE=cpu"
            )
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        return torch.device("cuda", local_rank)
    if device.type != "cpu":
        raise RuntimeError(
            f"torch.distributed has no backend for {device.type}; train on the CPU (gloo) with MTL_TUTORIAL_DEVICE=cpu"
        )
    dist.init_process_group("gloo")
    return device


def _check_importable(fn: Callable[..., Any]) -> None:
    """Raise unless a freshly started Python can import ``fn`` by name (what ``spawn`` does)."""
    in_notebook = getattr(fn, "__module__", None) == "__main__" and not hasattr(sys.modules["__main__"], "__file__")
    if "<" in getattr(fn, "__qualname__", "") or in_notebook:
        raise ValueError(
            f"run_local starts new Python processes that import fn by name, and {fn!r} cannot be imported: "
            f"define it at the top level of a .py module (not in a notebook, a lambda or another function) "
            f"and import it from there"
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_rank(
    rank_: int, world: int, port: int, folder: str, fn: Callable[..., Any], args: tuple, threads: int | None
) -> None:
    """One process of ``run_local``: join the group, run fn, leave, save the result for the parent."""
    if threads is not None:
        torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank_, world_size=world)
    try:
        result = fn(*args)
    finally:
        dist.destroy_process_group()
    with open(Path(folder) / f"{rank_}.pkl", "wb") as file:
        pickle.dump(result, file)


def run_local(
    fn: Callable[..., T], world_size: int, *args: Any, threads_per_process: int | None = None
) -> list[T]:
    """Run ``fn(*args)`` in ``world_size`` new processes on this machine, joined in a gloo process
    group on the CPU (what torchrun does, from Python); returns each rank's result, in rank order.

    An exception in any rank is raised here. fn must be importable by name: a function at the top
    level of a module, because each process is a fresh Python (``spawn``). threads_per_process:
    ``torch.set_num_threads`` in every process (None: torch's default; torchrun uses 1).
    """
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    _check_importable(fn)
    with tempfile.TemporaryDirectory() as folder:
        torch.multiprocessing.spawn(
            _run_rank, args=(world_size, _free_port(), folder, fn, args, threads_per_process), nprocs=world_size
        )
        results = []
        for r in range(world_size):
            with open(Path(folder) / f"{r}.pkl", "rb") as file:
                results.append(pickle.load(file))
    return results
