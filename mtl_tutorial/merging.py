"""Merging per-task LoRA updates into one model: task arithmetic and TIES-merging.

Each task t was tuned separately (its own LoRA pair in every targeted layer), so it owns a *task
vector*: the weight change ΔW_t = (α/r) B_t A_t of every LoRA layer. Merging adds them to the one
frozen backbone, so a single set of weights serves every task (each task keeps its head):

- **task arithmetic** (Ilharco et al. 2023, "Editing models with task arithmetic", eq. 1):
  W = W0 + Σ_t λ_t ΔW_t;
- **TIES-merging** (Yadav et al. 2023, "TIES-Merging", Alg. 1), per weight tensor:
  1. *trim*: keep the top ``density`` fraction of each ΔW_t by magnitude, zero the rest (Δ̂_t);
  2. *elect sign*: γ = sign(Σ_t Δ̂_t) entrywise ("total"; "frequency": sign(Σ_t sign Δ̂_t)), 0 → +;
  3. *disjoint merge*: the mean of λ_t Δ̂_t over the tasks whose Δ̂_t has sign γ at that entry
     (entries no task keeps stay 0); W = W0 + that mean.

Trimming is per weight tensor, as peft's ``ties`` does it (the paper trims the whole flattened task
vector). Our task arithmetic equals peft's ``add_weighted_adapter`` with ``combination_type="cat"``
(and ``"svd"`` at full rank); peft's ``"linear"`` merges the A's and the B's separately,
(Σ √λ_t B_t)(Σ √λ_t A_t), which adds cross terms B_s A_t and is *not* task arithmetic for two or more
tasks. Our TIES equals peft's ``"ties_svd"`` at full rank (peft's ``"ties"`` also works on A and B
separately) for two or more task vectors. With a single one, peft's ``add_weighted_adapter``
switches to ``"linear"`` whatever ``combination_type`` says and skips trimming: it returns λ ΔW,
while ``ties_merge([ΔW], [λ], density)`` trims, so the two differ for density < 1 (at density 1 both
give λ ΔW). ``tests/test_merging.py`` checks all of this against peft.

Layout: the merge rules on dicts of tensors (pure functions), then reading the task vectors out of
a ``MultiTaskLoRAModel`` and building the merged model.
"""

from __future__ import annotations

import copy
import math
import numbers
from typing import Any, Mapping, Sequence

import torch

from mtl_tutorial.lora import MultiTaskLoRALinear, MultiTaskLoRAModel, lora_layers
from mtl_tutorial.models import HardSharingModel

TaskVector = Mapping[str, torch.Tensor]
"""Layer name -> ΔW (out, in) of one task."""


def _check_task_vectors(task_vectors: Sequence[TaskVector], weights: Sequence[float] | None) -> list[float]:
    """The same layer names and shapes in every task vector; weights default to 1 per task."""
    if isinstance(task_vectors, Mapping) or not task_vectors:
        raise ValueError("task_vectors must be a non-empty list of {layer: ΔW} dicts, one per task")
    for t, vector in enumerate(task_vectors):
        if not isinstance(vector, Mapping):
            raise TypeError(
                f"task vector {t} must be a dict {{layer: ΔW tensor}}, got {type(vector).__name__}; "
                f"e.g. lora_task_vector(model, task)"
            )
        if not vector:
            raise ValueError(f"task vector {t} is empty; it needs the ΔW of every LoRA layer (lora_task_vector)")
        for name, delta in vector.items():
            if not isinstance(delta, torch.Tensor):
                raise TypeError(f"{name}: ΔW of task {t} must be a tensor, got {type(delta).__name__}")
    names = list(task_vectors[0])
    for t, vector in enumerate(task_vectors):
        if list(vector) != names:
            raise ValueError(
                f"task vector {t} has layers {sorted(vector)[:3]}..., task vector 0 has {sorted(names)[:3]}...; "
                f"merge task vectors of the same model (the same LoRA targets)"
            )
        for name in names:
            if vector[name].shape != task_vectors[0][name].shape:
                raise ValueError(f"{name}: ΔW of task {t} has shape {tuple(vector[name].shape)}, task 0 has "
                                 f"{tuple(task_vectors[0][name].shape)}")
    if weights is None:
        return [1.0] * len(task_vectors)
    if isinstance(weights, (Mapping, str)) or not hasattr(weights, "__len__"):
        raise TypeError(
            f"weights must be a list with one λ_t per task vector, in their order, got {type(weights).__name__}; "
            f"e.g. [0.5] * {len(task_vectors)}"
        )
    if any(isinstance(w, bool) or not isinstance(w, (numbers.Real, torch.Tensor)) for w in weights):
        raise TypeError(f"weights must be numbers, got {list(weights)!r}")
    weights = [float(w) for w in weights]
    if not all(math.isfinite(w) for w in weights):
        raise ValueError(f"weights must be finite numbers, got {weights}")
    if len(weights) != len(task_vectors):
        raise ValueError(f"got {len(weights)} weights for {len(task_vectors)} task vectors; pass one λ_t per task")
    return weights


def _check_density(density: Any) -> None:
    if isinstance(density, bool) or not isinstance(density, numbers.Real) or not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], the fraction of each ΔW kept, got {density!r}")


def task_arithmetic(task_vectors: Sequence[TaskVector], weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """Σ_t λ_t ΔW_t per layer (Ilharco et al. 2023). weights: λ_t, default 1 for every task."""
    weights = _check_task_vectors(task_vectors, weights)
    return {name: sum(w * vector[name] for w, vector in zip(weights, task_vectors)) for name in task_vectors[0]}


def trim_to_density(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the k = ⌊density · numel⌋ entries of largest |value|, zero the others (TIES step 1)."""
    if not isinstance(delta, torch.Tensor):
        raise TypeError(f"delta must be a tensor, got {type(delta).__name__}")
    _check_density(density)
    keep = int(density * delta.numel())
    flat = delta.reshape(-1)
    mask = torch.zeros_like(flat)
    mask[flat.abs().topk(keep).indices] = 1
    return delta * mask.reshape(delta.shape)


def ties_merge(
    task_vectors: Sequence[TaskVector],
    weights: Sequence[float] | None = None,
    density: float = 0.2,
    sign_method: str = "total",
) -> dict[str, torch.Tensor]:
    """TIES-merging per layer (Yadav et al. 2023): trim to ``density``, elect the sign, average the
    agreeing entries; weights λ_t scale the trimmed task vectors before the average (as in peft).
    One task vector is trimmed too (λ · trim(ΔW)); peft does not trim a single adapter (module docstring)."""
    weights = _check_task_vectors(task_vectors, weights)
    _check_density(density)
    if sign_method not in ("total", "frequency"):
        raise ValueError(f"sign_method must be 'total' (sign of the sum) or 'frequency' (majority of signs), got {sign_method!r}")
    merged = {}
    for name in task_vectors[0]:
        trimmed = torch.stack([trim_to_density(vector[name], density) for vector in task_vectors])  # (T, out, in)
        signs = trimmed.sign()
        votes = trimmed.sum(0) if sign_method == "total" else signs.sum(0)
        elected = torch.where(votes >= 0, 1.0, -1.0).to(trimmed.dtype)
        agrees = signs == elected  # a trimmed-away zero agrees with no sign
        scaled = trimmed * torch.tensor(weights, dtype=trimmed.dtype).view(-1, *[1] * (trimmed.dim() - 1))
        merged[name] = (scaled * agrees).sum(0) / agrees.sum(0).clamp(min=1)
    return merged


def _check_model(model: Any) -> None:
    if not isinstance(model, MultiTaskLoRAModel):
        raise TypeError(
            f"model must be a MultiTaskLoRAModel (per-task LoRA pairs to merge), got {type(model).__name__}"
        )


def lora_task_vector(model: MultiTaskLoRAModel, task: str) -> dict[str, torch.Tensor]:
    """ΔW_t = (α/r) B_t A_t (out, in) of every LoRA layer of ``model`` for task ``task``, keyed by the
    layer's name inside ``model.trunk``."""
    _check_model(model)
    model._check_task(task)
    with torch.no_grad():
        return {name: layer.scaling * layer.B[task] @ layer.A[task] for name, layer in lora_layers(model.trunk).items()}


def merged_lora_model(model: MultiTaskLoRAModel, merged_deltas: Mapping[str, torch.Tensor]) -> HardSharingModel:
    """A new ``HardSharingModel``: ``model``'s trunk with every multi-task LoRA layer replaced by its
    frozen base, W = W0 + merged ΔW, and copies of all of ``model``'s heads. One set of weights, one
    pass per batch whatever the tasks in it; ``model`` is left unchanged."""
    _check_model(model)
    if not isinstance(merged_deltas, Mapping):
        raise TypeError(
            f"merged_deltas must be one dict {{layer: ΔW}}, got {type(merged_deltas).__name__}; merge the task "
            f"vectors first, e.g. task_arithmetic(vectors) or ties_merge(vectors)"
        )
    layers = lora_layers(model.trunk)
    if set(merged_deltas) != set(layers):
        missing, extra = sorted(set(layers) - set(merged_deltas)), sorted(set(merged_deltas) - set(layers))
        raise ValueError(f"merged deltas do not fit this model's LoRA layers: missing {missing[:3]}, unexpected "
                         f"{extra[:3]}; merge the task vectors of this model (lora_task_vector)")
    for name, layer in layers.items():
        delta, shape = merged_deltas[name], tuple(layer.base.weight.shape)
        if not isinstance(delta, torch.Tensor) or tuple(delta.shape) != shape:
            got = tuple(delta.shape) if isinstance(delta, torch.Tensor) else type(delta).__name__
            raise ValueError(f"{name}: the merged ΔW must be a tensor of the layer's weight shape {shape}, got {got}")
        if not torch.isfinite(delta).all():
            raise ValueError(f"{name}: the merged ΔW has nan or inf entries; check the weights and task vectors merged")
    trunk = copy.deepcopy(model.trunk)
    with torch.no_grad():
        for name, layer in lora_layers(trunk).items():
            if not isinstance(layer, MultiTaskLoRALinear):
                raise TypeError(f"{name} is not a multi-task LoRA layer")
            base = layer.base
            base.weight += merged_deltas[name].to(base.weight.dtype)
            parent_name, _, child = name.rpartition(".")
            setattr(trunk.get_submodule(parent_name), child, base)
    return HardSharingModel(trunk.requires_grad_(False), copy.deepcopy(dict(model.heads)))


def single_task_lora_model(model: MultiTaskLoRAModel, task: str) -> HardSharingModel:
    """Task ``task`` alone, merged: W = W0 + ΔW_t in every LoRA layer, with ``task``'s head only
    (the deployment a merged single-task model gives; no LoRA matmul left at inference)."""
    merged = merged_lora_model(model, lora_task_vector(model, task))
    return HardSharingModel(merged.trunk, {task: merged.heads[task]})
