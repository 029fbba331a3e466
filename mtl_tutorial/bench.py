"""Benchmarks of the course's reference code against the library it is checked against.

    mtl-tutorial bench lora           our LoRA vs peft's LoRA, one training step on MiniLM
    mtl-tutorial bench aggregators    PCGrad, MGDA, CAGrad vs equal weighting, per training step

``forward_latency`` times inference (chapter 08 compares a merged LoRA model with an unmerged one).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from typing import Sequence

import torch
from torch import nn

from mtl_tutorial.backbone import count_parameters, load_backbone, mean_pool, quiet_transformers
from mtl_tutorial.lora import apply_lora, copy_to_peft, lora_layers
from mtl_tutorial.runtime import seed_everything


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


def main(argv: list[str] | None = None, prog: str = "python -m mtl_tutorial.bench") -> int:
    """``lora``: our LoRA step vs peft's; ``aggregators``: PCGrad/MGDA/CAGrad steps vs equal weighting."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Time training steps on MiniLM: our LoRA vs peft's (lora), or each gradient "
        "aggregator vs equal weighting (aggregators).",
    )
    parser.add_argument("which", choices=("lora", "aggregators"), help="what to time")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per example")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank r (lora only)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (lora only)")
    args = parser.parse_args(argv)
    if args.which == "aggregators":
        from mtl_tutorial.aggregation import aggregator_step_times, step_time_table, text_benchmark_setup

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
