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

Modules: ``steps`` (training and inference timing, a step's memory), ``serving``, ``solvers``,
``parallel`` (data-parallel and mixed-precision steps); every public name is importable from here.
"""

from __future__ import annotations

import argparse
import os

import torch

from mtl_tutorial.backbone import load_backbone
from mtl_tutorial.checks import int_argument
# the package's names (chapters and tests import them from mtl_tutorial.bench)
from mtl_tutorial.bench.parallel import ddp_table, ddp_throughput, precision_step_times, precision_table
from mtl_tutorial.bench.serving import serving_setup, serving_table, serving_throughput
from mtl_tutorial.bench.solvers import solver_time_table, solver_times
from mtl_tutorial.bench.steps import (
    StepClock, aggregator_step_times, examples_per_second, forward_latency, lora_step_time, state_bytes,
    step_time_table, text_benchmark_setup, training_step_memory, training_step_times,
)


__all__ = [
    "StepClock", "aggregator_step_times", "ddp_table", "ddp_throughput", "examples_per_second", "forward_latency",
    "lora_step_time", "main", "precision_step_times", "precision_table", "serving_setup", "serving_table",
    "serving_throughput", "solver_time_table", "solver_times", "state_bytes", "step_time_table", "text_benchmark_setup",
    "training_step_memory", "training_step_times",
]


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
    parser.add_argument("--batch-size", type=int_argument(1), default=32)
    parser.add_argument("--seq-len", type=int_argument(2), default=64, help="tokens per example")
    parser.add_argument("--rank", type=int_argument(1), default=8, help="LoRA rank r (lora only)")
    parser.add_argument("--steps", type=int_argument(1), default=10, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int_argument(0), default=3, help="untimed steps first (lora only)")
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
        at_8 = results[8]
        mixed = at_8["mixed batch"]
        print(f"T = 8, paired by round: mixed batch / ceiling = {mixed['ratio_to_ceiling']:.2f} "
              f"[{mixed['ratio_low']:.2f}, {mixed['ratio_high']:.2f}] (goal ≥ 0.80, met when the whole interval is); "
              f"mixed batch / swapping = {mixed['ratio_to_ceiling'] / at_8['swapping']['ratio_to_ceiling']:.2f} (goal > 1); "
              f"mixed batch / merged per task = {mixed['ratio_to_ceiling'] / at_8['merged per task']['ratio_to_ceiling']:.2f} "
              f"(ratios of the geometric means over the rounds; their intervals are in the table, against the ceiling)")
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
