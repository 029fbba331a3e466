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

Layout: the ranks, the collectives and a shard's losses (``global_task_losses``) live one floor below
the loop, in ``mtl_tutorial.collectives`` (re-exported here), because ``training`` calls them; this
package, above the loop, starts processes (``init_distributed`` under torchrun, ``run_local`` for
tests, benchmarks and notebooks), holds the experiment (``distributed.experiment``,
``correlated_tasks_setup``) and the entry point ``python -m mtl_tutorial.distributed``
(``distributed/__main__.py``, ``main``), which imports the loop.
"""

from __future__ import annotations

import gc
import os
import pickle
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

from mtl_tutorial.collectives import (  # the public names of data-parallel training, one floor below the loop
    all_reduce_mean,
    all_reduce_sum,
    average_gradients,
    broadcast_parameters,
    data_parallel,
    global_task_losses,
    rank,
    world_size,
)
from mtl_tutorial.distributed.experiment import correlated_tasks_setup  # noqa: F401  (its home before)
from mtl_tutorial.runtime import get_device

T = TypeVar("T")
__all__ = ["all_reduce_mean", "all_reduce_sum", "average_gradients", "broadcast_parameters", "correlated_tasks_setup",
           "data_parallel", "global_task_losses", "init_distributed", "rank", "run_local", "world_size"]


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


def _run_rank(
    rank_: int, world: int, port: int, folder: str, fn: Callable[..., Any], args: tuple, threads: int | None
) -> None:
    """One process of ``run_local``: join the group, run fn, leave, save the result for the parent.

    The group's store is the parent's (``port``), so it outlives every rank. On success every rank
    waits for the others twice: after joining (before fn) and after fn, once the garbage its fn left
    (DDP's reducer holds the group through reference cycles) is freed, so that no rank tears its
    connections down while another is still in a collective or still connecting (seen in CI as a
    DistNetworkError, and as a SIGABRT in rank 1). After an exception the rank leaves at once and
    ``spawn`` stops the others.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    store = dist.TCPStore("127.0.0.1", port, world, is_master=False)
    dist.init_process_group("gloo", store=store, rank=rank_, world_size=world)
    try:
        dist.barrier()
        result = fn(*args)
        gc.collect()
        dist.barrier()
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
    # The store lives here, in the parent, on a port the system picks (no race for a "free" port).
    store = dist.TCPStore("127.0.0.1", 0, None, is_master=True, wait_for_workers=False)
    with tempfile.TemporaryDirectory() as folder:
        torch.multiprocessing.spawn(
            _run_rank, args=(world_size, store.port, folder, fn, args, threads_per_process), nprocs=world_size
        )
        results = []
        for r in range(world_size):
            with open(Path(folder) / f"{r}.pkl", "rb") as file:
                results.append(pickle.load(file))
    return results
