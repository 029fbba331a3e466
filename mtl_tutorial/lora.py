"""LoRA from scratch: low-rank updates of frozen linear layers, one per task if you like.

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", eq. (3): a frozen
pretrained weight W0 (out, in) gets a trainable update of rank at most r,

    h = W0 x + ΔW x = W0 x + (α / r) · B A x,     A: (r, in), B: (out, r), r ≪ min(in, out),

so a layer trains r·(in + out) numbers instead of in·out. ΔW can be folded into W0 after
training (``merge``): the deployed model has the original shape and costs nothing extra.

Multi-task LoRA keeps one frozen backbone and one pair (A_t, B_t) per task t; an example of task t
sees W0 + (α/r) B_t A_t. Unlike peft (whose mixed-adapter batches work at inference only), a batch
may mix tasks in training too: each example is routed through its own task's matrices.

Layout, as in peft: the layers (the math), ``apply_lora`` (where they go, by module-name patterns),
then the bookkeeping (the multi-task model, merging, copying into peft). Routing a batch to its
tasks and saving one task are shared with the other PEFT methods in ``mtl_tutorial.multitask_peft``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtl_tutorial.multitask_peft import MultiTaskPEFTModel, TaskRoutedLayer, check_task_names, no_target_error


def _check_lora_arguments(base: nn.Module, r: int, alpha: float, dropout: float) -> None:
    if not isinstance(base, nn.Linear):
        raise TypeError(f"LoRA wraps an nn.Linear, got {type(base).__name__}")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ValueError(f"rank r must be an int >= 1, got {r!r}")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


def _new_lora_pair(base: nn.Linear, r: int) -> tuple[nn.Parameter, nn.Parameter]:
    """A fresh (A, B): A (r, in) ~ kaiming_uniform(a=√5), i.e. U(-1/√in, 1/√in) as nn.Linear and
    peft initialise it; B (out, r) = 0."""
    weight = base.weight
    A = torch.empty(r, base.in_features, dtype=weight.dtype, device=weight.device)
    nn.init.kaiming_uniform_(A, a=math.sqrt(5))
    # B starts at zero so ΔW = BA = 0 at initialisation: a new LoRA layer changes nothing
    B = torch.zeros(base.out_features, r, dtype=weight.dtype, device=weight.device)
    return nn.Parameter(A), nn.Parameter(B)


def lora_update(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scaling: float) -> torch.Tensor:
    """(α/r) · B A x for inputs x (..., in) -> (..., out).

    Computed as ((x Aᵀ) · α/r) Bᵀ: two thin matmuls through the r-dimensional bottleneck, never the
    full (out, in) product B A, and the scaling applied where the tensor is smallest (..., r).
    """
    return F.linear(F.linear(x, A) * scaling, B)


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update: y = base(x) + (α/r) · B A x.

    base: the pretrained layer W0 (out, in), b (frozen here); A: (r, in); B: (out, r);
    dropout applies to the input of the update only, as in the paper and peft.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        _check_lora_arguments(base, r, alpha, dropout)
        self.base = base.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.A, self.B = _new_lora_pair(base, r)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (α/r) · B A: (out, in)."""
        return self.scaling * (self.B @ self.A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:  # base.weight already holds W0 + ΔW: adding the update again would count it twice
            return self.base(x)
        return self.base(x) + lora_update(self.dropout(x), self.A, self.B, self.scaling)

    @torch.no_grad()
    def merge(self) -> None:
        """W ← W0 + ΔW: one matmul per call afterwards. For inference: A and B get no gradient while merged."""
        if self.merged:
            raise RuntimeError("this LoRA layer is already merged; call unmerge() before merging again")
        self.base.weight += self.delta_weight().to(self.base.weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W ← W - ΔW: back to W0 (up to float rounding) and the two-branch forward."""
        if not self.merged:
            raise RuntimeError("this LoRA layer is not merged; there is nothing to unmerge")
        self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, merged={self.merged}"


class MultiTaskLoRALinear(TaskRoutedLayer):
    """A frozen ``nn.Linear`` with one LoRA pair per task: y_i = base(x_i) + (α/r) · B_t A_t x_i
    for example i of task t.

    A[t]: (r, in), B[t]: (out, r), in ParameterDicts so a task absent from a batch gets no gradient
    at all (its optimizer state does not move). ``routing`` (set by ``task_routing`` or
    ``set_active_task`` of ``mtl_tutorial.multitask_peft``) says whose examples come next.
    """

    def __init__(self, base: nn.Linear, tasks: Sequence[str], r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        _check_lora_arguments(base, r, alpha, dropout)
        check_task_names(tasks)
        self.base = base.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.A, self.B = nn.ParameterDict(), nn.ParameterDict()
        for task in tasks:
            self.A[task], self.B[task] = _new_lora_pair(base, r)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.A.keys())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, ..., in) -> (B, ..., out); the batch dimension comes first."""
        routing = self.current_routing(len(x))
        y, x = self.base(x), self.dropout(x)
        if isinstance(routing, str):
            return y + lora_update(x, self.A[routing], self.B[routing], self.scaling)
        for task, positions in routing.items():  # add each task's update to the rows of its examples
            positions = positions.to(x.device)
            y = y.index_add(0, positions, lora_update(x[positions], self.A[task], self.B[task], self.scaling))
        return y

    def extra_repr(self) -> str:
        return f"tasks={list(self.tasks)}, r={self.r}, alpha={self.alpha}"


def _matches(name: str, pattern: str) -> bool:
    """peft's rule: a module name matches a pattern it equals or ends with as '.<pattern>'."""
    return name == pattern or name.endswith("." + pattern)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear | MultiTaskLoRALinear]:
    """Module name -> LoRA layer, for every LoRA layer in ``model``."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, (LoRALinear, MultiTaskLoRALinear))
    }


def apply_lora(
    model: nn.Module,
    target_modules: Sequence[str] = ("query", "value"),
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    tasks: Sequence[str] | None = None,
) -> nn.Module:
    """Replace every ``nn.Linear`` whose name matches a pattern of ``target_modules`` by a LoRA layer,
    freeze everything else, and return ``model`` (changed in place).

    ``tasks=None``: ``LoRALinear`` (one update); a list of task names: ``MultiTaskLoRALinear`` (one
    update per task). A name matches a pattern it equals or ends with as ``.<pattern>`` (as in peft):
    ``"query"`` matches ``encoder.layer.0.attention.self.query``.
    """
    if isinstance(target_modules, str):
        target_modules = (target_modules,)
    wrapped = lora_layers(model)
    if wrapped:
        raise ValueError(
            f"this model already has {len(wrapped)} LoRA layers (e.g. {next(iter(wrapped))}); apply LoRA "
            f"once, or start again from a fresh copy of the backbone (copy.deepcopy before apply_lora)"
        )
    if not target_modules:
        raise no_target_error(model, "nn.Linear to wrap (target_modules is empty: name at least one, e.g. 'query')")
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    for pattern in target_modules:
        if not any(_matches(name, pattern) for name in linears):
            raise no_target_error(model, f"nn.Linear matching target module {pattern!r} (named {pattern!r} or ending in '.{pattern}')")
    targets = [name for name in linears if any(_matches(name, pattern) for pattern in target_modules)]
    model.requires_grad_(False)
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        layer = LoRALinear(base, r, alpha, dropout) if tasks is None else MultiTaskLoRALinear(base, tasks, r, alpha, dropout)
        setattr(parent, child, layer)
    return model


def merge_lora(model: nn.Module) -> int:
    """Merge every ``LoRALinear`` of ``model`` (W ← W0 + ΔW); returns how many were merged."""
    layers = [layer for layer in lora_layers(model).values() if isinstance(layer, LoRALinear)]
    for layer in layers:
        layer.merge()
    return len(layers)


def unmerge_lora(model: nn.Module) -> int:
    """Undo ``merge_lora``: W ← W - ΔW in every ``LoRALinear``; returns how many were unmerged."""
    layers = [layer for layer in lora_layers(model).values() if isinstance(layer, LoRALinear)]
    for layer in layers:
        layer.unmerge()
    return len(layers)


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold each ``LoRALinear`` into its base and put the plain ``nn.Linear`` back: the model has
    the original architecture again (no extra matmul, nothing left to unmerge). Returns ``model``."""
    for name, layer in lora_layers(model).items():
        if not isinstance(layer, LoRALinear):
            raise TypeError(f"{name} is a multi-task LoRA layer; merge_and_unload needs single-task LoRA")
        if not layer.merged:
            layer.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.base)
    return model


def low_rank_errors(delta_weight: torch.Tensor) -> torch.Tensor:
    """e_r = ‖ΔW − ΔW_r‖_F / ‖ΔW‖_F for r = 0, 1, ..., k (k = min(out, in)): (k + 1,) float64.

    ΔW_r is the best rank-r approximation of ΔW (out, in): by Eckart–Young it keeps the r largest
    singular values σ_1 ≥ σ_2 ≥ ..., so e_r = sqrt(Σ_{i>r} σ_i²) / sqrt(Σ_i σ_i²). e_0 = 1, e_k = 0.
    """
    if delta_weight.dim() != 2:
        raise ValueError(f"delta_weight must be a matrix (out, in), got shape {tuple(delta_weight.shape)}")
    squares = torch.linalg.svdvals(delta_weight.detach().double().cpu()).square()
    if squares.sum() == 0:
        raise ValueError("delta_weight is zero: there is no change to approximate (did training update it?)")
    tails = squares.flip(0).cumsum(0).flip(0)  # tails[r] = Σ_{i>r} σ_i² (1-based i)
    return torch.cat([tails, tails.new_zeros(1)]).sqrt() / tails[0].sqrt()


@dataclass(frozen=True)
class RankTradeoff:
    """What rank r buys for a weight change ΔW (out, in): LoRA's r·(in + out) numbers against the
    in·out of ΔW itself, and the relative error e_r of the best rank-r approximation."""

    r: int
    lora_parameters: int
    full_parameters: int
    relative_error: float

    def __repr__(self) -> str:
        return (
            f"rank r = {self.r}: LoRA trains {self.lora_parameters:,} of {self.full_parameters:,} numbers "
            f"({self.lora_parameters / self.full_parameters:.2%}); "
            f"relative error ‖ΔW − ΔW_r‖_F / ‖ΔW‖_F = {self.relative_error:.4f}"
        )


def rank_tradeoff(delta_weight: torch.Tensor, r: int) -> RankTradeoff:
    """The ``RankTradeoff`` of rank ``r`` (1 <= r <= min(out, in)) for ΔW (out, in)."""
    out_features, in_features = delta_weight.shape
    if not 1 <= r <= min(out_features, in_features):
        raise ValueError(f"r must be between 1 and {min(out_features, in_features)}, got {r}")
    return RankTradeoff(r, r * (in_features + out_features), in_features * out_features,
                        low_rank_errors(delta_weight)[r].item())


class MultiTaskLoRAModel(MultiTaskPEFTModel):
    """Multi-task LoRA: a frozen trunk whose targeted linear layers hold one LoRA pair per task, and
    one head per task.

    An example of task t runs through W0 + (α/r) B_t A_t in every targeted layer, then head t.
    ``forward(x, "sentiment")`` and ``forward(x, ["sentiment", "pos", ...])`` follow
    ``HardSharingModel`` (a mixed batch returns ``{task: TaskOutput}``), in training too;
    ``set_active_task``, ``save_task`` and ``load_task`` come from ``MultiTaskPEFTModel``.
    """

    save_format = "mtl_tutorial.lora.task/1"

    def __init__(
        self,
        trunk: nn.Module,
        heads: Mapping[str, nn.Module],
        target_modules: Sequence[str] = ("query", "value"),
        r: int = 8,
        alpha: float = 16,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(trunk, heads)
        target_modules = (target_modules,) if isinstance(target_modules, str) else tuple(target_modules)
        apply_lora(self.trunk, target_modules, r, alpha, dropout, tasks=self.tasks)
        self.r, self.alpha, self.target_modules = r, alpha, target_modules

    def task_peft_state_dict(self, task: str) -> dict[str, torch.Tensor]:
        """``lora.<layer>.A`` (r, in) and ``lora.<layer>.B`` (out, r) of task ``task``, for each LoRA layer."""
        state = {}
        for name, layer in lora_layers(self.trunk).items():
            state[f"lora.{name}.A"], state[f"lora.{name}.B"] = layer.A[task], layer.B[task]
        return state

    def task_metadata(self) -> dict[str, str]:
        return {"r": str(self.r), "alpha": str(self.alpha), "target_modules": ",".join(self.target_modules)}

    @classmethod
    def arguments_from_metadata(cls, metadata: dict[str, str]) -> dict:
        alpha = metadata["alpha"]
        return {"target_modules": tuple(metadata["target_modules"].split(",")), "r": int(metadata["r"]),
                "alpha": int(alpha) if alpha.lstrip("-").isdigit() else float(alpha)}  # as str() wrote it


def copy_to_peft(model: nn.Module, peft_model: nn.Module, adapter_name: str = "default", task: str | None = None) -> int:
    """Copy our A and B into adapter ``adapter_name`` of a peft model built on the same backbone
    (peft's ``lora_A.weight`` is our A, ``lora_B.weight`` our B); returns the number of layers copied.

    model: the encoder that holds our LoRA layers (for a ``MultiTaskLoRAModel``, ``model.trunk.encoder``);
    task: which task's pair to copy from multi-task layers. The scalings α/r must agree.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA layers; apply_lora first")
    peft_layers = {
        name: module for name, module in peft_model.named_modules()
        if hasattr(module, "lora_A") and adapter_name in module.lora_A
    }
    with torch.no_grad():
        for name, layer in layers.items():
            if isinstance(layer, LoRALinear):
                A, B = layer.A, layer.B
            elif task in layer.tasks:
                A, B = layer.A[task], layer.B[task]
            else:
                raise ValueError(f"{name} holds one LoRA pair per task; pass task= one of: {', '.join(layer.tasks)}")
            matches = [peft_name for peft_name in peft_layers if _matches(peft_name, name)]
            if len(matches) != 1:
                raise ValueError(
                    f"{name} has no single peft LoRA layer with adapter {adapter_name!r} to copy into "
                    f"(found {matches}); build the peft model on the same backbone with the same targets"
                )
            target = peft_layers[matches[0]]
            if not math.isclose(target.scaling[adapter_name], layer.scaling):
                raise ValueError(
                    f"{name}: peft's scaling {target.scaling[adapter_name]} differs from ours {layer.scaling}; "
                    f"use LoraConfig(r={layer.r}, lora_alpha={layer.alpha})"
                )
            target.lora_A[adapter_name].weight.copy_(A)
            target.lora_B[adapter_name].weight.copy_(B)
    return len(layers)
