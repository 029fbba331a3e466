"""``python -m mtl_tutorial.distributed``: train ``correlated_tasks_setup`` data-parallel (README, "Scale out").

Run by torchrun on every process (or alone, on one); rank 0 prints the test scores and writes
--output. This is the only part of ``mtl_tutorial.distributed`` that imports the loop and the
methods: the loop imports the collectives, so they live in the package's ``__init__``, apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import torch.distributed as dist

from mtl_tutorial.aggregation import GradientAggregation
from mtl_tutorial.checks import float_argument, int_argument
from mtl_tutorial.data import MultiTaskDataset, multitask_loader
from mtl_tutorial.distributed import init_distributed, rank, world_size
from mtl_tutorial.distributed.experiment import correlated_tasks_setup
from mtl_tutorial.training import PRECISIONS, evaluate, normalized_mean_squared_error, train
from mtl_tutorial.weighting import DynamicWeightAverage, EqualWeighting, GradNorm, UncertaintyWeighting

WEIGHTINGS = ("equal", "uncertainty", "gradnorm", "dwa", "pcgrad", "mgda", "cagrad")


def main(argv: list[str] | None = None) -> int:
    """``python -m mtl_tutorial.distributed``: train ``correlated_tasks_setup`` on every process
    torchrun starts (or on one, without torchrun); rank 0 prints the test scores and writes --output."""
    parser = argparse.ArgumentParser(
        prog="python -m mtl_tutorial.distributed",
        description="Train two correlated synthetic regression tasks (chapters 01, 02 and 05) with a shared trunk, "
        "data-parallel on every process that torchrun starts (one process without torchrun). --batch-size is "
        "the global batch, shared by the processes; rank 0 prints and writes --output.",
    )
    parser.add_argument("--steps", type=int_argument(1), default=200)
    parser.add_argument("--batch-size", type=int_argument(1), default=64, help="global batch: all processes together")
    parser.add_argument("--lr", type=float_argument(0.0, low_open=True), default=1e-3)
    parser.add_argument("--weighting", choices=WEIGHTINGS, default="equal",
                        help="loss weighting (chapter 05) or gradient aggregator (chapter 06)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--tasks", type=int_argument(2), default=2, help="number of tasks")
    parser.add_argument("--correlation", type=float_argument(-1.0, 1.0), default=0.5,
                        help="correlation of the tasks' linear parts")
    parser.add_argument("--mixed", action="store_true", help="mixed batches (default: one task per batch)")
    parser.add_argument("--seed", type=int_argument(0), default=0)
    parser.add_argument("--output", metavar="FILE.json", help="rank 0 writes the History and test scores here")
    args = parser.parse_args(argv)
    if args.output:   # checked before training, not after it
        folder = Path(args.output).resolve().parent
        if not folder.is_dir():
            parser.error(f"--output {args.output}: the folder {folder} does not exist; create it first (mkdir -p)")
        if not os.access(folder, os.W_OK):
            parser.error(f"--output {args.output}: the folder {folder} is not writable; choose another path")

    device = init_distributed()
    try:
        model, train_data, test_data, loss_fns = correlated_tasks_setup(args.tasks, args.correlation, seed=args.seed)
        tasks = list(loss_fns)
        loader = multitask_loader(
            MultiTaskDataset(train_data), args.batch_size, strategy="uniform", mixed=args.mixed, seed=args.seed,
            replacement=True, num_batches=args.steps, num_replicas=world_size(), rank=rank(),
        )
        if args.weighting in ("pcgrad", "mgda", "cagrad"):
            weighting = GradientAggregation(model, args.weighting)
        else:
            strategies = {"equal": EqualWeighting, "uncertainty": UncertaintyWeighting, "gradnorm": GradNorm,
                          "dwa": DynamicWeightAverage}
            weighting = strategies[args.weighting](tasks)
        if rank() == 0:
            backend = dist.get_backend() if dist.is_initialized() else "none"
            print(f"{world_size()} process(es), backend {backend}, device {device.type}; global batch "
                  f"{args.batch_size} ({args.batch_size / world_size():g} per process), {args.steps} steps, "
                  f"{args.weighting}, {args.precision}", flush=True)
        history = train(model, loader, loss_fns, num_steps=args.steps, lr=args.lr, weighting=weighting,
                        device=device, precision=args.precision, desc=f"rank 0 of {world_size()}")
        scores = evaluate(model, test_data, {"nmse": normalized_mean_squared_error})
        if rank() == 0:
            print("test normalised MSE: " + ", ".join(f"{task} {scores[f'{task}/nmse']:.4f}" for task in tasks))
            if args.output:
                record = {"world_size": world_size(), "arguments": vars(args), "test": scores,
                          "history": dataclasses.asdict(history)}
                Path(args.output).write_text(json.dumps(record, indent=1))
                print(f"history and scores written to {args.output}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
