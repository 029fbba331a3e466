"""Serving T tasks: mixed-task batches on one backbone vs merged per-task models vs adapter swapping.

``serving_throughput`` times the set-ups on the same batches, round by round (the order rotates), and
compares each with the ceiling *within* a round: round k gives the ratio

    ρ_k = (examples/s of the set-up in round k) / (examples/s of the ceiling in round k),

so a slow moment of the machine, which slows every set-up of that round alike, cancels. Ratios
multiply, so they are averaged on the log scale: the geometric mean exp(mean_k log ρ_k), with the
95 % Student-t interval of mean_k log ρ_k (``evidence.mean_interval``) exponentiated. An interval
that covers 1 is "no measurable difference" from the ceiling.

Layout: ``serving_setup`` (a model with T tasks and the texts), ``serving_throughput`` (the timing),
``paired_speed_ratio`` (the statistics of one set-up against the ceiling), ``ratio_verdict`` (the words
an interval supports) and ``serving_table`` (text).
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from mtl_tutorial.backbone import load_backbone
from mtl_tutorial.bench.steps import state_bytes
from mtl_tutorial.data import load_text_tasks
from mtl_tutorial.evidence import mean_interval
from mtl_tutorial.lora import MultiTaskLoRAModel, lora_layers
from mtl_tutorial.merging import single_task_lora_model
from mtl_tutorial.models import TextEncoderTrunk
from mtl_tutorial.runtime import seed_everything

SETUPS = ("mixed batch", "merged per task", "swapping", "ceiling")
REFERENCE = "ceiling"


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
        self.rewrite_seconds = 0.0   # time spent rewriting weights, summed over every call
        self.model = single_task_lora_model(model, model.tasks[0])
        self.model.heads = nn.ModuleDict(copy.deepcopy(dict(model.heads)))
        self.targets = {name: self.model.trunk.get_submodule(name) for name in lora_layers(model.trunk)}
        self.originals = {name: layer.base.weight.detach().clone() for name, layer in lora_layers(model.trunk).items()}

    def __call__(self, texts: list[str], task: str) -> torch.Tensor:
        if task != self.active:
            start = time.perf_counter()
            with torch.no_grad():
                for name, linear in self.targets.items():
                    layer = self.source.trunk.get_submodule(name)
                    linear.weight.copy_(self.originals[name]).addmm_(layer.B[task], layer.A[task], alpha=layer.scaling)
            self.active = task
            self.rewrite_seconds += time.perf_counter() - start
        return self.model(texts, task)

    def memory_bytes(self) -> int:
        adapters = sum(t.numel() * t.element_size() for task in self.source.tasks
                       for t in self.source.task_peft_state_dict(task).values())
        return state_bytes(self.model) + adapters + sum(w.numel() * w.element_size() for w in self.originals.values())


def paired_speed_ratio(seconds: Sequence[float], reference_seconds: Sequence[float],
                       confidence: float = 0.95) -> tuple[float, float, float]:
    """(geometric mean, low, high) of a set-up's speed relative to a reference, paired by round.

    seconds, reference_seconds: (R,) the time each took for the same work in round k; the speed
    ratio of round k is ρ_k = reference_seconds[k] / seconds[k] (> 1: the set-up was faster). The
    mean and interval are those of log ρ_k (Student t over the R rounds), exponentiated; with one
    round there is no interval and low = high = nan.
    """
    a, b = np.asarray(seconds, dtype=float), np.asarray(reference_seconds, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"need the same number (>= 1) of rounds for the set-up and the reference, got {a.shape} and {b.shape}")
    if not ((a > 0) & (b > 0)).all():
        raise ValueError(f"times must be > 0 seconds, got {a.tolist()} and {b.tolist()}")
    logs = np.log(b / a)
    if len(logs) < 2:
        return float(np.exp(logs[0])), math.nan, math.nan
    interval = mean_interval(logs, confidence)
    return math.exp(interval.mean), math.exp(interval.low), math.exp(interval.high)


def _padded_tokens(trunk: TextEncoderTrunk, parts: Sequence[Sequence[str]]) -> int:
    """Tokens the trunk's passes over ``parts`` hold, padding included: Σ (texts × longest text) per pass."""
    total = 0
    for texts in parts:
        lengths = [len(ids) for ids in trunk.tokenizer(list(texts), truncation=True, max_length=trunk.max_length)["input_ids"]]
        total += len(lengths) * max(lengths)
    return total


@torch.no_grad()
def serving_throughput(
    model: MultiTaskLoRAModel, texts: Sequence[str], batch_size: int = 32, num_batches: int = 4, rounds: int = 5,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Examples per second of three ways to serve mixed-task traffic with per-task LoRA, and of the ceiling,
    timed round by round on the same batches.

    Traffic: ``num_batches`` batches of ``batch_size`` requests, each request's task drawn uniformly
    from ``model.tasks`` (seeded) and its text from ``texts``. The set-ups (``SETUPS``):

    - ``"mixed batch"``: one backbone, unmerged LoRA, every batch in one pass (each example routed);
    - ``"merged per task"``: one merged model per task (W0 + ΔW_t, T backbone copies); a batch is
      split by task, one pass per task;
    - ``"swapping"``: one merged copy whose weights are rewritten to W0 + ΔW_t before each task's part;
    - ``"ceiling"``: one merged single-task model on single-task batches of the same texts: what one
      backbone pass per batch costs at best.

    One untimed warm-up round, then ``rounds`` timed rounds; in each, every set-up serves all the
    batches once, in an order that rotates from round to round. Returns name -> {

    - ``"examples_per_s"``: the median over rounds;
    - ``"ratio_to_ceiling"``, ``"ratio_low"``, ``"ratio_high"``: the set-up's speed over the ceiling's
      in the same round, geometric mean over rounds with its 95 % interval (``paired_speed_ratio``;
      nan with one round; exactly 1 for the ceiling itself);
    - ``"rounds"``: the number of timed rounds;
    - ``"padded_tokens"``: tokens its passes hold in one round, padding included (a split batch pads
      each part only to its own longest text, so the split set-ups hold fewer);
    - ``"memory_bytes"``: the weights it holds }

    and for ``"swapping"`` also ``"rewrite_share"``: the median share of its time per round spent
    rewriting weights (the cost swapping adds to merged per-task passes).
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

    def by_task(batch_texts: list[str], names: list[str]) -> list[tuple[str, list[str]]]:
        return [(task, [text for text, name in zip(batch_texts, names) if name == task]) for task in dict.fromkeys(names)]

    def split_by_task(serve: Callable[[list[str], str], torch.Tensor]) -> Callable[[list[str], list[str]], None]:
        def run(batch_texts: list[str], names: list[str]) -> None:
            for task, part in by_task(batch_texts, names):
                serve(part, task)
        return run

    setups: dict[str, Callable[[list[str], list[str]], object]] = {
        "mixed batch": lambda batch_texts, names: model(batch_texts, names),
        "merged per task": split_by_task(lambda batch_texts, task: merged[task](batch_texts, task)),
        "swapping": split_by_task(swapping),
        "ceiling": lambda batch_texts, names: merged[tasks[0]](batch_texts, tasks[0]),
    }
    times: dict[str, list[float]] = {name: [] for name in SETUPS}
    rewrite_shares = []   # the part of each swapping round spent rewriting weights
    for round_ in range(rounds + 1):
        shift = round_ % len(SETUPS)
        for name in SETUPS[shift:] + SETUPS[:shift]:
            rewrites, start = swapping.rewrite_seconds, time.perf_counter()
            for batch_texts, names in batches:
                setups[name](batch_texts, names)
            if round_ > 0:
                times[name].append(time.perf_counter() - start)
                if name == "swapping":
                    rewrite_shares.append((swapping.rewrite_seconds - rewrites) / times[name][-1])
    whole = _padded_tokens(model.trunk, [batch_texts for batch_texts, _ in batches])
    split = _padded_tokens(model.trunk, [part for batch in batches for _, part in by_task(*batch)])
    tokens = {"mixed batch": whole, "merged per task": split, "swapping": split, "ceiling": whole}
    memory = {"mixed batch": state_bytes(model), "merged per task": sum(state_bytes(m) for m in merged.values()),
              "swapping": swapping.memory_bytes(), "ceiling": state_bytes(merged[tasks[0]])}
    results = {}
    for name in SETUPS:
        ratio, low, high = (1.0, 1.0, 1.0) if name == REFERENCE else paired_speed_ratio(times[name], times[REFERENCE])
        results[name] = {"examples_per_s": batch_size * num_batches / statistics.median(times[name]),
                         "ratio_to_ceiling": ratio, "ratio_low": low, "ratio_high": high, "rounds": rounds,
                         "padded_tokens": tokens[name], "memory_bytes": memory[name]}
    results["swapping"]["rewrite_share"] = statistics.median(rewrite_shares)
    return results


def ratio_verdict(entry: Mapping[str, float]) -> str:
    """The words a set-up's interval of speed over the ceiling supports: ``"slower"``, ``"faster"``,
    ``"no measurable difference"``, ``"reference"`` (the ceiling) or ``"no interval (1 round)"``."""
    low, high = entry["ratio_low"], entry["ratio_high"]
    if math.isnan(low) or math.isnan(high):
        return "no interval (1 round)"
    if low == high == 1.0:
        return "reference"
    if high < 1:
        return "slower"
    if low > 1:
        return "faster"
    return "no measurable difference"


def serving_table(results: Mapping[int, Mapping[str, Mapping[str, float]]]) -> str:
    """``{T: serving_throughput(...)}`` as text: the median examples/s, the speed relative to the ceiling
    paired by round (geometric mean [95 % interval]) and what it supports, padded tokens per round,
    and the weights held in MB (10⁶ bytes)."""
    header = (f"{'T':>3}  {'set-up':<16}{'examples/s':>11}  {'× ceiling [95 % interval]':<29}{'verdict':<26}"
              f"{'tokens':>8}{'weights MB':>12}")
    lines = [header]
    rounds = set()
    for num_tasks, result in results.items():
        for name, entry in result.items():
            rounds.add(entry["rounds"])
            if math.isnan(entry["ratio_low"]):
                ratio = f"{entry['ratio_to_ceiling']:.3f}"
            else:   # 3 decimals: an interval that ends at 0.998 is not one that reaches 1
                ratio = f"{entry['ratio_to_ceiling']:.3f} [{entry['ratio_low']:.3f}, {entry['ratio_high']:.3f}]"
            lines.append(f"{num_tasks:>3}  {name:<16}{entry['examples_per_s']:>11.1f}  {ratio:<29}{ratio_verdict(entry):<26}"
                         f"{entry['padded_tokens']:>8,}{entry['memory_bytes'] / 1e6:>12.1f}")
    shares = {t: result["swapping"]["rewrite_share"] for t, result in results.items() if "rewrite_share" in result.get("swapping", {})}
    if shares:
        lines.append("swapping: rewriting the weights took " + ", ".join(f"{100 * share:.1f} %" for share in shares.values())
                     + f" of its time per round at T = {', '.join(map(str, shares))} (median of the rounds)")
    n = "/".join(str(r) for r in sorted(rounds))
    lines.append(f"(examples/s: median of {n} timed rounds; × ceiling: each round's examples/s over the ceiling's in the "
                 f"same round, geometric mean over the rounds with its 95 % interval; tokens: padded tokens of one round; "
                 f"MB = 10^6 bytes)")
    return "\n".join(lines)
