"""Serving T tasks: mixed-task batches on one backbone vs merged per-task models vs adapter swapping."""

from __future__ import annotations

import copy
import statistics
import time
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from mtl_tutorial.backbone import load_backbone
from mtl_tutorial.data import (
    load_text_tasks,
)
from mtl_tutorial.lora import MultiTaskLoRAModel, lora_layers
from mtl_tutorial.merging import single_task_lora_model
from mtl_tutorial.models import TextEncoderTrunk
from mtl_tutorial.bench.steps import state_bytes
from mtl_tutorial.runtime import seed_everything




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
        self.model = single_task_lora_model(model, model.tasks[0])
        self.model.heads = nn.ModuleDict(copy.deepcopy(dict(model.heads)))
        self.targets = {name: self.model.trunk.get_submodule(name) for name in lora_layers(model.trunk)}
        self.originals = {name: layer.base.weight.detach().clone() for name, layer in lora_layers(model.trunk).items()}

    def __call__(self, texts: list[str], task: str) -> torch.Tensor:
        if task != self.active:
            with torch.no_grad():
                for name, linear in self.targets.items():
                    layer = self.source.trunk.get_submodule(name)
                    linear.weight.copy_(self.originals[name]).addmm_(layer.B[task], layer.A[task], alpha=layer.scaling)
            self.active = task
        return self.model(texts, task)

    def memory_bytes(self) -> int:
        adapters = sum(t.numel() * t.element_size() for task in self.source.tasks
                       for t in self.source.task_peft_state_dict(task).values())
        return state_bytes(self.model) + adapters + sum(w.numel() * w.element_size() for w in self.originals.values())


@torch.no_grad()
def serving_throughput(
    model: MultiTaskLoRAModel, texts: Sequence[str], batch_size: int = 32, num_batches: int = 4, rounds: int = 3,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Examples per second of three ways to serve mixed-task traffic with per-task LoRA, side by side.

    Traffic: ``num_batches`` batches of ``batch_size`` requests, each request's task drawn uniformly
    from ``model.tasks`` (seeded) and its text from ``texts``. The ways:

    - ``"mixed batch"``: one backbone, unmerged LoRA, every batch in one pass (each example routed);
    - ``"merged per task"``: one merged model per task (W0 + ΔW_t, T backbone copies); a batch is
      split by task, one pass per task;
    - ``"swapping"``: one merged copy whose weights are rewritten to W0 + ΔW_t before each task's part;
    - ``"ceiling"``: one merged single-task model on single-task batches of the same size: what one
      backbone pass per batch costs at best.

    The set-ups take turns in an order that rotates every round, after one untimed warm-up round.
    Returns name -> ``{"examples_per_s": median, "memory_bytes": weights held}``.
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

    def split_by_task(serve: Callable[[list[str], str], torch.Tensor]) -> Callable[[list[str], list[str]], None]:
        def run(batch_texts: list[str], names: list[str]) -> None:
            for task in dict.fromkeys(names):
                serve([text for text, name in zip(batch_texts, names) if name == task], task)
        return run

    setups: dict[str, Callable[[list[str], list[str]], object]] = {
        "mixed batch": lambda batch_texts, names: model(batch_texts, names),
        "merged per task": split_by_task(lambda batch_texts, task: merged[task](batch_texts, task)),
        "swapping": split_by_task(swapping),
        "ceiling": lambda batch_texts, names: merged[tasks[0]](batch_texts, tasks[0]),
    }
    names_ = list(setups)
    times: dict[str, list[float]] = {name: [] for name in names_}
    for round_ in range(rounds + 1):
        for name in names_[round_ % len(names_):] + names_[: round_ % len(names_)]:
            start = time.perf_counter()
            for batch_texts, names in batches:
                setups[name](batch_texts, names)
            if round_ > 0:
                times[name].append(time.perf_counter() - start)
    memory = {"mixed batch": state_bytes(model), "merged per task": sum(state_bytes(m) for m in merged.values()),
              "swapping": swapping.memory_bytes(), "ceiling": state_bytes(merged[tasks[0]])}
    return {name: {"examples_per_s": batch_size * num_batches / statistics.median(times[name]),
                   "memory_bytes": memory[name]} for name in names_}


def serving_table(results: Mapping[int, Mapping[str, Mapping[str, float]]]) -> str:
    """``{T: serving_throughput(...)}`` as text: examples/s, the ratio to the ceiling, and weights in MB."""
    lines = [f"{'T':>3}  {'set-up':<16}{'examples/s':>12}{'× ceiling':>11}{'weights MB':>12}"]
    for num_tasks, result in results.items():
        ceiling = result["ceiling"]["examples_per_s"]
        for name, entry in result.items():
            lines.append(f"{num_tasks:>3}  {name:<16}{entry['examples_per_s']:>12.1f}{entry['examples_per_s'] / ceiling:>11.2f}"
                         f"{entry['memory_bytes'] / 2**20:>12.1f}")
    return "\n".join(lines)
