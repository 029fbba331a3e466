"""Soft parameter sharing: a representation per task, and training decides how much the tasks share.

Hard sharing (``models.HardSharingModel``) forces every task through one trunk. The models here give
each task t its own representation r_t(x) (the article's §3.1.2) and couple the tasks in four ways:

- ``SoftSharingTowers`` + ``SoftSharingPenalty`` (Duong et al. 2015, "Low resource dependency
  parsing: cross-lingual parameter sharing in a neural network parser"): one tower per task, and
  a penalty that pulls the towers' weights together,

      L = Σ_t L_t + ρ Σ_{s<t} Σ_{shared θ} ‖θ_s − θ_t‖²;  ρ = 0: independent models, ρ → ∞: hard sharing.

- ``CrossStitchNetwork`` (Misra et al. 2016, "Cross-stitch networks for multi-task learning", eq. 1):
  one column of layers per task; after layer l the columns are mixed by a learned T × T matrix α^l,

      h̃_t = Σ_s α_ts h_s;  α = I: independent columns, α_ts = 1/T: every column gets their average.

- ``MultiGateMixtureOfExperts`` (Ma et al. 2018, "Modeling task relationships in multi-task learning
  with multi-gate mixture-of-experts", KDD): E experts f_e shared by all tasks, one gate per task,

      r_t(x) = Σ_e g_t(x)_e f_e(x),  g_t(x) = softmax(W_t x) over the E experts;  E = 1: hard sharing.

- ``ProgressiveLayeredExtraction`` (Tang et al. 2020, "Progressive layered extraction (PLE): a
  novel multi-task learning model for personalized recommendations", RecSys): experts of each task
  plus shared experts; task t's gate mixes only its own experts and the shared ones. One level is
  CGC (customized gate control); stacked levels also have a shared gate, over all experts, that
  feeds the next level's shared experts.

Every model here is a ``HardSharingModel`` whose trunk returns one representation per task, stacked
as (B, T, H), and whose heads each read their own task's row (``TaskRow``): routing single-task and
mixed batches, task names and their errors are written once, in ``models``. The trunk runs on the
whole batch, so a mixed batch computes all T representations of every example and each head keeps
its row; a single-task batch also computes all T (cross-stitch needs them; for the others it is a
few small layers more).

How it differs from the papers: Duong et al. penalise one layer pair of two parsers; here any named
parameters of T towers (default: all). Cross-stitch units here mix whole vectors (one α per task
pair and layer), as in Misra et al.'s simplest form, not per channel. The gate read-outs
(``gate_weights``, ``gate_metrics``, ``alpha_metrics``) are ours, for plots and ``History``.

Layout: the argument checks and routing helpers (``TaskRow``), the penalty (towers and the
weighting that adds it), cross-stitch, the experts (MMoE, PLE), the read-outs that ``train``'s
``eval_fn`` records.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from mtl_tutorial.checks import check_count, is_real_number
from mtl_tutorial.models import HardSharingModel, mlp
from mtl_tutorial.objectives import weighted_sum




def _check_mapping(what: str, value: Any, example: str) -> None:
    """Raise unless ``value`` is a non-empty task -> module dict."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a dict task -> module, got {type(value).__name__}; e.g. {example}")
    if not value:
        raise ValueError(f"{what} is empty; give one entry per task, e.g. {example}")


def _check_module_list(what: str, modules: Any, example: str) -> None:
    """Raise unless ``modules`` is a list (tuple, ModuleList) of modules; one module, even a Sequential, is not."""
    if not isinstance(modules, (list, tuple, nn.ModuleList)):
        raise TypeError(f"{what} must be a list of modules, got a {type(modules).__name__}; e.g. {example}")
    for module in modules:
        if not isinstance(module, nn.Module):
            raise TypeError(f"{what} must hold nn.Module objects, got a {type(module).__name__}; e.g. {example}")


def _task_list(tasks: Any) -> list[str]:
    """``tasks`` as a list, or raise unless it is a non-empty collection of distinct task names."""
    if isinstance(tasks, str) or not isinstance(tasks, Iterable):
        raise TypeError(f"tasks must be a list of task names, got {type(tasks).__name__} {tasks!r}; e.g. ['a', 'b']")
    tasks = list(tasks)
    if not tasks or not all(isinstance(task, str) and task for task in tasks):
        raise ValueError(f"tasks must be a non-empty list of non-empty strings, got {list(tasks)!r}")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks must be distinct, got {list(tasks)}; each task gets its own gate")
    return tasks


class TaskRow(nn.Module):
    """A task's head reading its own row of per-task features: (B, T, H) -> head((B, H) row ``index``)."""

    def __init__(self, index: int, head: nn.Module) -> None:
        super().__init__()
        check_count("index (the task's row)", index, minimum=0)
        if not isinstance(head, nn.Module):
            raise TypeError(f"head must be an nn.Module, got {type(head).__name__}")
        self.index, self.head = index, head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features[:, self.index])


def _task_rows(heads: Mapping[str, nn.Module]) -> dict[str, TaskRow]:
    return {task: TaskRow(index, head) for index, (task, head) in enumerate(heads.items())}


def _check_same_tasks(what: str, tasks: Sequence[str], heads: Mapping[str, nn.Module]) -> None:
    if list(tasks) != list(heads):
        raise ValueError(
            f"{what} are given for tasks {', '.join(map(str, tasks))} but heads for "
            f"{', '.join(map(str, heads))}; give both for the same tasks, in the same order"
        )


def _stack_rows(rows: Sequence[torch.Tensor], names: Sequence[str], what: str) -> torch.Tensor:
    """Stack T per-task (B, H) tensors into (B, T, H), or say which one has the odd shape."""
    shapes = [tuple(row.shape) for row in rows]
    if len(set(shapes)) > 1 or rows[0].dim() != 2:
        listed = ", ".join(f"{name} {shape}" for name, shape in zip(names, shapes))
        raise ValueError(
            f"the {what} must each return (B, H) features of the same width H, got {listed}; "
            f"give them the same output size"
        )
    return torch.stack(list(rows), dim=1)


# --- penalty soft sharing (Duong et al. 2015) -----------------------------------------------------


class TaskTowers(nn.Module):
    """One tower per task on the same input: x -> (B, T, H), row t = tower_t(x)."""

    def __init__(self, towers: Mapping[str, nn.Module]) -> None:
        super().__init__()
        _check_mapping("towers", towers, "{'a': mlp(16, 8), 'b': mlp(16, 8)}")
        self.towers = nn.ModuleDict(towers)

    def forward(self, x: Any) -> torch.Tensor:
        return _stack_rows([tower(x) for tower in self.towers.values()], list(self.towers), "towers")


def _matches(name: str, pattern: str) -> bool:
    """``pattern`` is a parameter name, or a prefix ending in ``.`` (a whole layer)."""
    return name == pattern or (pattern.endswith(".") and name.startswith(pattern))


class SoftSharingTowers(HardSharingModel):
    """Soft sharing by a penalty: tower_t and head_t per task, towers pulled together by ``penalty()``.

    towers: task -> module mapping x to (B, H), all with the same architecture; heads: task -> module
    mapping (B, H) to outputs. shared: names of the tower parameters that the penalty ties (as in
    ``tower.named_parameters()``, e.g. ``["0.weight", "0.bias"]``, or a prefix ending in ``.`` such
    as ``"0."`` for a whole layer); None ties every parameter. Train with ``SoftSharingPenalty(ρ)``.
    """

    def __init__(
        self, towers: Mapping[str, nn.Module], heads: Mapping[str, nn.Module], shared: Sequence[str] | None = None
    ) -> None:
        _check_mapping("towers", towers, "{'a': mlp(16, 8), 'b': mlp(16, 8)}")
        _check_mapping("heads", heads, "{'a': nn.Linear(8, 2), 'b': nn.Linear(8, 3)}")
        _check_same_tasks("towers", list(towers), heads)
        super().__init__(TaskTowers(towers), _task_rows(heads))
        reference = dict(next(iter(towers.values())).named_parameters())
        if isinstance(shared, str):
            raise TypeError(f"shared must be a list of parameter names, not a string; wrap it: [{shared!r}]")
        if shared is not None:
            shared = list(shared) if isinstance(shared, Iterable) else shared
            if not isinstance(shared, list) or not all(isinstance(name, str) for name in shared):
                raise TypeError(
                    f"shared must be a list of parameter names (strings), got {shared!r}; e.g. ['0.weight']"
                )
            if not shared:
                raise ValueError(
                    "shared is empty, so the penalty would tie nothing and always be 0; pass None to tie every "
                    "parameter, or names such as ['0.weight'] (for independent towers, use rho = 0)"
                )
        patterns = list(reference) if shared is None else list(shared)
        unmatched = [s for s in patterns if not any(_matches(n, s) for n in reference)]
        if unmatched:
            raise ValueError(f"shared names {unmatched} match no tower parameter; the towers have: {', '.join(reference)}")
        self.shared_names = [n for n in reference if any(_matches(n, s) for s in patterns)]
        for task, tower in towers.items():
            params = dict(tower.named_parameters())
            for name in self.shared_names:
                if name not in params or params[name].shape != reference[name].shape:
                    raise ValueError(
                        f"tower {task!r} has no parameter {name!r} of the first tower's shape; "
                        f"soft sharing needs towers of the same architecture"
                    )

    def penalty(self) -> torch.Tensor:
        """Σ_{s<t} Σ_{θ in shared} ‖θ_s − θ_t‖²: each unordered pair of towers once; 0-dim tensor."""
        towers = list(self.trunk.towers.values())
        params = [dict(tower.named_parameters()) for tower in towers]
        total = torch.zeros((), device=next(self.parameters()).device)
        for s in range(len(towers)):
            for t in range(s + 1, len(towers)):
                for name in self.shared_names:
                    total = total + (params[s][name] - params[t][name]).pow(2).sum()
        return total


class SoftSharingPenalty(nn.Module):
    """A weighting that adds ρ · model.penalty() to the weighted task losses (``training.train``'s seam).

    total = weighting(losses) + ρ · model.penalty(); the task weights reported are the inner
    weighting's. weighting: None (λ_t = 1), a dict of static λ_t, or any loss ``Weighting`` (an
    ``nn.Module`` one is trained with the model, as ``train`` does). Gradient aggregators write
    the gradients themselves and cannot take a penalty term: they are refused.
    """

    def __init__(self, rho: float, weighting: Any = None) -> None:
        super().__init__()
        if not is_real_number(rho):
            raise TypeError(f"rho (the penalty strength ρ) must be a number, got {type(rho).__name__} {rho!r}")
        if not (math.isfinite(rho) and rho >= 0):
            raise ValueError(f"rho (the penalty strength ρ) must be finite and >= 0, got {rho!r}")
        if getattr(weighting, "writes_gradients", False):
            raise ValueError(
                f"{type(weighting).__name__} writes the gradients itself, so a penalty added to the loss "
                f"would be ignored; use SoftSharingPenalty with a loss weighting (None, a dict, uncertainty...)"
            )
        if isinstance(weighting, Mapping):
            bad = {t: w for t, w in weighting.items()
                   if not (is_real_number(w) and math.isfinite(w) and w >= 0)}
            if bad:
                raise ValueError(f"the static task weights λ_t must be finite numbers >= 0, got {bad}")
        elif weighting is not None and not callable(weighting):
            raise TypeError(
                f"weighting must be None (λ_t = 1), a dict {{task: λ_t}} or a loss weighting module, got "
                f"{type(weighting).__name__} {weighting!r}"
            )
        self.rho, self.weighting = float(rho), weighting
        self.lr = getattr(weighting, "lr", None)

    def forward(self, losses: dict[str, torch.Tensor], **ctx: Any) -> tuple[torch.Tensor, dict[str, float]]:
        model = ctx.get("model")
        if model is None or not callable(getattr(model, "penalty", None)):
            raise ValueError(
                "SoftSharingPenalty needs the model, with a penalty() method (e.g. SoftSharingTowers); "
                "train() passes it as model=; call it as penalty(losses, model=model)"
            )
        if isinstance(self.weighting, Mapping):
            missing = [t for t in losses if t not in self.weighting]
            if missing:
                raise ValueError(
                    f"no static weight for task(s) {', '.join(map(repr, missing))}; the weights are given for "
                    f"{', '.join(map(str, self.weighting))}: give one λ_t per task"
                )
        if self.weighting is None or isinstance(self.weighting, Mapping):
            weights = {t: 1.0 for t in losses} if self.weighting is None else {t: self.weighting[t] for t in losses}
            total = weighted_sum(losses, weights)
        else:
            total, weights = self.weighting(losses, **ctx)
        return total + self.rho * model.penalty(), weights


# --- cross-stitch units (Misra et al. 2016) -------------------------------------------------------


def cross_stitch_init(num_tasks: int, self_weight: float = 0.9) -> torch.Tensor:
    """α with ``self_weight`` on the diagonal and the rest spread evenly: (T, T), rows sum to 1.

    self_weight ∈ [0, 1]: row t is then a weighted average of the columns (1: independent columns,
    1/T: every task gets their mean), as in Misra et al.'s initialisations.
    """
    check_count("num_tasks (cross-stitch mixes at least 2 task columns)", num_tasks, minimum=2)
    if not is_real_number(self_weight):
        raise TypeError(f"self_weight must be a number in [0, 1], got {type(self_weight).__name__} {self_weight!r}")
    if not 0 <= self_weight <= 1:  # also refuses nan
        raise ValueError(
            f"self_weight (the diagonal of α) must be in [0, 1], got {self_weight!r}: each row of α averages "
            f"the columns, 1 keeps them independent and 1/T mixes them evenly (Misra et al. start at 0.9)"
        )
    alpha = torch.full((num_tasks, num_tasks), (1.0 - self_weight) / (num_tasks - 1))
    return alpha.fill_diagonal_(self_weight)


class CrossStitchColumns(nn.Module):
    """T columns of L layers, mixed after every layer: (B, ...) -> (B, T, H_L).

    h_t^l = layer_t^l(h̃_t^(l-1)), h̃^0_t = x;  h̃_t^l = Σ_s α^l_ts h_s^l  (row t of α^l feeds task t).
    The α keep the floating dtype they are given in (default: that of the columns' parameters), and
    are used in the dtype of the features they mix.
    """

    def __init__(
        self, columns: Mapping[str, Sequence[nn.Module]], alphas: Sequence[torch.Tensor] | None = None,
        self_weight: float = 0.9,
    ) -> None:
        super().__init__()
        example = "{'a': [mlp(16, 8), mlp(8, 4)], 'b': [mlp(16, 8), mlp(8, 4)]}"
        _check_mapping("columns", columns, example)
        if len(columns) < 2:
            raise ValueError(f"cross-stitch mixes at least 2 task columns, got {len(columns)}: {', '.join(columns)}")
        for task, layers in columns.items():
            _check_module_list(f"column {task!r}", layers, f"one list of layers per task, {example}")
        tasks = list(columns)
        depths = {task: len(layers) for task, layers in columns.items()}
        if len(set(depths.values())) != 1 or 0 in depths.values():
            raise ValueError(f"every column needs the same number (>= 1) of layers, got {depths}")
        depth, num_tasks = depths[tasks[0]], len(tasks)
        self.tasks = tasks
        self.layers = nn.ModuleList(nn.ModuleList(columns[task][l] for task in tasks) for l in range(depth))
        dtype = next((p.dtype for layers in columns.values() for layer in layers for p in layer.parameters()
                      if p.is_floating_point()), torch.get_default_dtype())
        if alphas is None:
            alphas = [cross_stitch_init(num_tasks, self_weight).to(dtype) for _ in range(depth)]
        if not isinstance(alphas, (list, tuple)) and getattr(alphas, "ndim", None) != 3:  # a list, or an (L, T, T) array
            got = f"shape {tuple(alphas.shape)}" if hasattr(alphas, "shape") else type(alphas).__name__
            raise TypeError(
                f"alphas must be a list of (T, T) tensors, one per layer (or an (L, T, T) tensor), got {got}; "
                f"for one layer wrap the matrix: [alpha]"
            )
        if len(alphas) != depth:
            raise ValueError(f"got {len(alphas)} α matrices for {depth} layers; give one per layer")
        alphas = [torch.as_tensor(alpha) for alpha in alphas]
        for l, alpha in enumerate(alphas):
            if tuple(alpha.shape) != (num_tasks, num_tasks):
                raise ValueError(
                    f"α of layer {l} has shape {tuple(alpha.shape)}; with {num_tasks} tasks "
                    f"({', '.join(tasks)}) it must be ({num_tasks}, {num_tasks}): row t mixes the columns for task t"
                )
            if not torch.isfinite(alpha).all():
                raise ValueError(f"α of layer {l} has nan or inf entries: {alpha.tolist()}; give finite mixing weights")
        self.alphas = nn.ParameterList(
            nn.Parameter(a.clone() if a.is_floating_point() else a.to(dtype)) for a in alphas
        )

    def forward(self, x: Any) -> torch.Tensor:
        inputs = [x] * len(self.tasks)
        for layer, alpha in zip(self.layers, self.alphas):
            h = _stack_rows([column(inp) for column, inp in zip(layer, inputs)], self.tasks, "column layers")
            mixed = torch.einsum("ts,bsh->bth", alpha.to(h.dtype), h)  # h̃_t = Σ_s α_ts h_s: (B, T, H)
            inputs = list(mixed.unbind(dim=1))
        return mixed


class CrossStitchNetwork(HardSharingModel):
    """Cross-stitch network: a column of layers per task, mixed after each layer by α (T × T).

    columns: task -> list of L layers (each (B, ·) -> (B, H_l), the same H_l in every column);
    heads: task -> module on (B, H_L). α starts at ``self_weight`` on the diagonal (Misra et al.
    found 0.9 / 0.1 works), or at ``alphas`` (one (T, T) tensor per layer). The α are parameters,
    trained with the rest; ``alpha_metrics()`` reads them for ``History`` via ``eval_fn``.
    """

    def __init__(
        self, columns: Mapping[str, Sequence[nn.Module]], heads: Mapping[str, nn.Module],
        alphas: Sequence[torch.Tensor] | None = None, self_weight: float = 0.9,
    ) -> None:
        _check_mapping("columns", columns, "{'a': [mlp(16, 8), mlp(8, 4)], 'b': [mlp(16, 8), mlp(8, 4)]}")
        _check_mapping("heads", heads, "{'a': nn.Linear(4, 2), 'b': nn.Linear(4, 3)}")
        _check_same_tasks("columns", list(columns), heads)
        super().__init__(CrossStitchColumns(columns, alphas, self_weight), _task_rows(heads))

    def alpha_values(self) -> torch.Tensor:
        """The current α of every layer: (L, T, T), detached, on the CPU."""
        return torch.stack([alpha.detach().cpu() for alpha in self.trunk.alphas])

    def alpha_metrics(self) -> dict[str, float]:
        """{``alpha_metric_name(l, t, s)``: α^l_ts} for every layer and task pair."""
        values = self.alpha_values()
        return {alpha_metric_name(l, t, s): float(values[l, i, j])
                for l in range(len(values)) for i, t in enumerate(self.tasks) for j, s in enumerate(self.tasks)}


def alpha_metric_name(layer: int, to_task: str, from_task: str) -> str:
    """History metric name of α^layer_(to, from), the weight of ``from_task``'s column in ``to_task``'s."""
    return f"alpha/{layer}/{to_task}<-{from_task}"


# --- mixtures of experts (Ma et al. 2018; Tang et al. 2020) ---------------------------------------


def _check_width(x: torch.Tensor, gate: nn.Linear, where: str) -> None:
    if isinstance(x, torch.Tensor) and x.dim() != 2:
        raise ValueError(
            f"the gates of {where} take a batch of inputs (B, {gate.in_features}), got shape {tuple(x.shape)}; "
            f"for one example pass x.unsqueeze(0), for more dims flatten them first"
        )
    if not isinstance(x, torch.Tensor) or x.shape[-1] != gate.in_features:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"the gates of {where} take inputs of width {gate.in_features}, got {got}; "
            f"set the gate input size to the width of the inputs (x.shape[-1])"
        )


class MixtureOfExpertsTrunk(nn.Module):
    """E shared experts and one softmax gate per task: x (B, D) -> (B, T, H)."""

    def __init__(self, experts: Sequence[nn.Module], tasks: Sequence[str], gate_input_dim: int) -> None:
        super().__init__()
        _check_module_list("experts", experts, "[mlp(16, 8) for _ in range(3)]")
        tasks = _task_list(tasks)
        check_count("gate_input_dim (the width D of the inputs)", gate_input_dim)
        if len(experts) < 1:
            raise ValueError(
                "MMoE needs at least one expert (E >= 1), got none; with E = 1 it is hard sharing "
                "with that expert as the trunk"
            )
        self.tasks = list(tasks)
        self.experts = nn.ModuleList(experts)
        self.gates = nn.ModuleDict({task: nn.Linear(gate_input_dim, len(experts)) for task in tasks})

    def gate_weights(self, x: torch.Tensor) -> torch.Tensor:
        """g_t(x) = softmax over the E experts of W_t x + b_t: (B, D) -> (B, T, E), rows sum to 1."""
        _check_width(x, next(iter(self.gates.values())), "this MMoE")
        return torch.stack([gate(x).softmax(dim=-1) for gate in self.gates.values()], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = self.gate_weights(x)  # (B, T, E)
        names = [f"expert {e + 1}" for e in range(len(self.experts))]
        outputs = _stack_rows([expert(x) for expert in self.experts], names, "experts")  # (B, E, H)
        return torch.einsum("bte,beh->bth", gates, outputs)  # r_t = Σ_e g_t,e f_e


class MultiGateMixtureOfExperts(HardSharingModel):
    """MMoE: E experts (each x (B, D) -> (B, H)) shared by all tasks, a softmax gate and a head per task.

    gate_input_dim: D, the width of x (the gates are linear maps of the input, as in the paper).
    ``gate_weights(x)`` is (B, T, E); ``expert_names()`` labels the E columns.
    """

    def __init__(self, experts: Sequence[nn.Module], heads: Mapping[str, nn.Module], gate_input_dim: int) -> None:
        _check_mapping("heads", heads, "{'task 1': nn.Linear(16, 1)}")
        super().__init__(MixtureOfExpertsTrunk(experts, list(heads), gate_input_dim), _task_rows(heads))

    def gate_weights(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk.gate_weights(x)

    def expert_names(self) -> list[str]:
        return [f"expert {e + 1}" for e in range(len(self.trunk.experts))]


class ExtractionLevel(nn.Module):
    """One PLE level (CGC when alone): each task's experts, shared experts, a gate per task, and
    optionally a shared gate over all experts (every level but the last).

    Inputs: per-task inputs (B, T, D) and the shared input (B, D). Task t's gate, on task t's
    input, mixes [task t's experts on its input, shared experts on the shared input]; the shared
    gate, on the shared input, mixes every expert. Outputs (B, T, H) and the shared (B, H) or None.
    """

    def __init__(
        self, task_experts: Mapping[str, Sequence[nn.Module]], shared_experts: Sequence[nn.Module],
        input_dim: int, shared_gate: bool,
    ) -> None:
        super().__init__()
        _check_mapping("task_experts", task_experts, "{'a': [mlp(16, 8)], 'b': [mlp(16, 8)]}")
        _task_list(task_experts)
        for task, experts in task_experts.items():
            _check_module_list(f"the experts of task {task!r}", experts, "[mlp(16, 8)] ([] for none)")
        _check_module_list("shared_experts", shared_experts, "[mlp(16, 8), mlp(16, 8)] ([] for none)")
        check_count("input_dim", input_dim)
        if not isinstance(shared_gate, bool):
            raise TypeError(f"shared_gate must be True or False, got {type(shared_gate).__name__} {shared_gate!r}")
        for task, experts in task_experts.items():
            if len(experts) + len(shared_experts) < 1:
                raise ValueError(f"task {task!r} has no expert to gate over; give it or the shared pool one")
        self.tasks = list(task_experts)
        self.task_experts = nn.ModuleDict({t: nn.ModuleList(e) for t, e in task_experts.items()})
        self.shared_experts = nn.ModuleList(shared_experts)
        num_shared = len(shared_experts)
        self.gates = nn.ModuleDict({t: nn.Linear(input_dim, len(e) + num_shared) for t, e in task_experts.items()})
        total = sum(len(e) for e in task_experts.values()) + num_shared
        self.shared_gate = nn.Linear(input_dim, total) if shared_gate else None

    def expert_names(self) -> list[str]:
        """All experts of the level: each task's in task order, then the shared ones."""
        names = [f"{t} expert {e + 1}" for t, experts in self.task_experts.items() for e in range(len(experts))]
        return names + [f"shared expert {e + 1}" for e in range(len(self.shared_experts))]

    def _run(self, task_inputs: torch.Tensor, shared_input: torch.Tensor):
        _check_width(shared_input, next(iter(self.gates.values())), "this PLE level")
        expected = (len(shared_input), len(self.tasks), shared_input.shape[1])
        if not isinstance(task_inputs, torch.Tensor) or tuple(task_inputs.shape) != expected:
            got = tuple(task_inputs.shape) if isinstance(task_inputs, torch.Tensor) else type(task_inputs).__name__
            raise ValueError(
                f"task_inputs must be (B, T, D) = {expected}, one row per task ({', '.join(self.tasks)}) next to the "
                f"shared input (B, D), got {got}"
            )
        shared_out = [expert(shared_input) for expert in self.shared_experts]
        own = {t: [expert(task_inputs[:, i]) for expert in self.task_experts[t]] for i, t in enumerate(self.tasks)}
        outputs = [o for t in self.tasks for o in own[t]] + shared_out
        _stack_rows(outputs, self.expert_names(), "experts")  # one width for all experts
        gates = {t: self.gates[t](task_inputs[:, i]).softmax(dim=-1) for i, t in enumerate(self.tasks)}
        return own, shared_out, outputs, gates

    def gate_weights(self, task_inputs: torch.Tensor, shared_input: torch.Tensor) -> torch.Tensor:
        """Each task gate's weights over all experts of the level, 0 on other tasks' experts: (B, T, E_all)."""
        _, _, _, gates = self._run(task_inputs, shared_input)
        return self._spread(gates)

    def _spread(self, gates: Mapping[str, torch.Tensor]) -> torch.Tensor:
        first = next(iter(gates.values()))
        num_all = len(self.expert_names())
        num_shared = len(self.shared_experts)
        full = first.new_zeros(len(first), len(self.tasks), num_all)
        start = 0
        for i, t in enumerate(self.tasks):
            own = len(self.task_experts[t])
            full[:, i, start:start + own] = gates[t][:, :own]
            full[:, i, num_all - num_shared:] = gates[t][:, own:]
            start += own
        return full

    def forward(self, task_inputs: torch.Tensor, shared_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        own, shared_out, outputs, gates = self._run(task_inputs, shared_input)
        rows = [torch.einsum("be,beh->bh", gates[t], torch.stack(own[t] + shared_out, dim=1)) for t in self.tasks]
        shared = None
        if self.shared_gate is not None:
            weights = self.shared_gate(shared_input).softmax(dim=-1)
            shared = torch.einsum("be,beh->bh", weights, torch.stack(outputs, dim=1))
        return torch.stack(rows, dim=1), shared


def _check_levels(levels: Any) -> None:
    """Raise unless ``levels`` is a non-empty list of ``ExtractionLevel``s over the same tasks, each but
    the last with a shared gate."""
    if not isinstance(levels, (list, tuple, nn.ModuleList)) or not all(isinstance(l, ExtractionLevel) for l in levels):
        raise TypeError(
            f"levels must be a list of ExtractionLevel, got {type(levels).__name__}; build them with "
            f"extraction_levels(tasks, input_dim, widths)"
        )
    if len(levels) < 1:
        raise ValueError("PLE needs at least one extraction level (one level is CGC)")
    for k, level in enumerate(levels[:-1]):
        if level.shared_gate is None:
            raise ValueError(f"level {k} feeds another level, so it needs a shared gate (shared_gate=True)")
    for k, level in enumerate(levels[1:], start=1):
        if level.tasks != levels[0].tasks:
            raise ValueError(
                f"level {k} has experts for tasks {', '.join(level.tasks)}, level 0 for {', '.join(levels[0].tasks)}; "
                f"every level needs the same tasks, in the same order"
            )


def _level_index(level: Any, num_levels: int) -> int:
    """The position of ``level`` (negative counts from the end) among ``num_levels``, or a clear error."""
    if not isinstance(level, int) or isinstance(level, bool):
        raise TypeError(f"level must be an int, got {type(level).__name__} {level!r}")
    if not -num_levels <= level < num_levels:
        raise ValueError(
            f"level {level} is out of range: this PLE has {num_levels} level(s), 0..{num_levels - 1} (-1 for the last)"
        )
    return level % num_levels


class ExtractionNetwork(nn.Module):
    """PLE's stacked levels: x (B, D) -> (B, T, H). Level 1 sees x for every task and the shared input."""

    def __init__(self, levels: Sequence[ExtractionLevel]) -> None:
        super().__init__()
        _check_levels(levels)
        self.levels = nn.ModuleList(levels)

    def _inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_width(x, next(iter(self.levels[0].gates.values())), "this PLE")
        return x.unsqueeze(1).expand(-1, len(self.levels[0].tasks), *x.shape[1:]), x

    def gate_weights(self, x: torch.Tensor, level: int = -1) -> torch.Tensor:
        """The task gates of one level (default: the last) on inputs x: (B, T, E_all of that level)."""
        chosen = _level_index(level, len(self.levels))
        task_inputs, shared = self._inputs(x)
        for k in range(chosen):
            task_inputs, shared = self.levels[k](task_inputs, shared)
        return self.levels[chosen].gate_weights(task_inputs, shared)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        task_inputs, shared = self._inputs(x)
        for level in self.levels:
            task_inputs, shared = level(task_inputs, shared)
        return task_inputs


class ProgressiveLayeredExtraction(HardSharingModel):
    """PLE (CGC with one level): task-specific and shared experts, gated per task, a head per task.

    levels: ``ExtractionLevel``s (``extraction_levels`` builds MLP experts); heads: task -> module on
    (B, H) of the last level. ``gate_weights(x, level)`` is (B, T, E_all) with zeros on the experts
    a task's gate cannot see (other tasks' own experts); ``expert_names(level)`` labels them.
    """

    def __init__(self, levels: Sequence[ExtractionLevel], heads: Mapping[str, nn.Module]) -> None:
        _check_levels(levels)
        _check_mapping("heads", heads, "{'a': nn.Linear(8, 2), 'b': nn.Linear(8, 3)}")
        _check_same_tasks("the extraction levels' experts", levels[0].tasks, heads)
        super().__init__(ExtractionNetwork(levels), _task_rows(heads))

    def gate_weights(self, x: torch.Tensor, level: int = -1) -> torch.Tensor:
        return self.trunk.gate_weights(x, level)

    def expert_names(self, level: int = -1) -> list[str]:
        return self.trunk.levels[_level_index(level, len(self.trunk.levels))].expert_names()


def extraction_levels(
    tasks: Sequence[str], input_dim: int, widths: Sequence[int], num_task_experts: int = 1,
    num_shared_experts: int = 1, expert: Callable[[int, int], nn.Module] = mlp,
) -> list[ExtractionLevel]:
    """PLE levels with ``expert(fan_in, width)`` experts (default a Linear + ReLU): one level per width.

    ``extraction_levels(tasks, 100, [16])`` is CGC; ``[32, 16]`` two PLE levels. Every level but the
    last gets a shared gate.
    """
    tasks = _task_list(tasks)
    check_count("input_dim", input_dim)
    if not isinstance(widths, (list, tuple)):
        raise TypeError(
            f"widths must be a list with one expert width per level, got {widths!r}; e.g. [{widths!r}] for CGC"
        )
    if not widths:
        raise ValueError("widths is empty; give one expert width per level, e.g. [16] for CGC")
    for width in widths:
        check_count("every width in widths", width)
    check_count("num_task_experts", num_task_experts, minimum=0)
    check_count("num_shared_experts", num_shared_experts, minimum=0)
    if num_task_experts + num_shared_experts < 1:
        raise ValueError("num_task_experts + num_shared_experts must be >= 1: every task gate needs an expert to mix")
    if not callable(expert):
        raise TypeError(f"expert must be a function (fan_in, width) -> module such as mlp, got {type(expert).__name__}")
    levels, fan_in = [], input_dim
    for k, width in enumerate(widths):
        levels.append(ExtractionLevel(
            {t: [expert(fan_in, width) for _ in range(num_task_experts)] for t in tasks},
            [expert(fan_in, width) for _ in range(num_shared_experts)],
            input_dim=fan_in, shared_gate=k < len(widths) - 1,
        ))
        fan_in = width
    return levels


# --- read-outs for History ------------------------------------------------------------------------


def gate_metrics(model: MultiGateMixtureOfExperts | ProgressiveLayeredExtraction, x: torch.Tensor) -> dict[str, float]:
    """Mean gate weight of every task on every expert over inputs x: {``gate/<task>/<expert>``: value}.

    For ``eval_fn``: ``train(..., eval_fn=lambda m: gate_metrics(m, x_test), eval_every=50)`` records
    how the gates move over training (the last level's gates for PLE).
    """
    if not callable(getattr(model, "gate_weights", None)) or not callable(getattr(model, "expert_names", None)):
        hint = "; for cross-stitch use model.alpha_metrics()" if hasattr(model, "alpha_metrics") else ""
        raise TypeError(
            f"gate_metrics reads the gates of a MultiGateMixtureOfExperts or ProgressiveLayeredExtraction, got "
            f"{type(model).__name__}{hint}"
        )
    with torch.no_grad():
        weights = model.gate_weights(x).mean(dim=0)  # (T, E)
    return {f"gate/{task}/{name}": float(weights[i, e])
            for i, task in enumerate(model.tasks) for e, name in enumerate(model.expert_names())}
