"""Bottleneck adapters from scratch: small trainable modules inside a frozen transformer, one set per task.

Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP", §2.1 and Figure 2 (the
article's §4.1.3 and §5.2.1): an adapter maps a hidden state h ∈ R^H through a bottleneck of size
m ≪ H and adds the result back,

    adapter(h) = h + W_up σ(W_down h + b_down) + b_up,    W_down: (m, H), W_up: (H, m),

so it trains 2·H·m + m + H numbers. W_up and b_up start at zero: a freshly added adapter is the
identity and the model computes exactly what the pretrained one did (training starts from it).

Where adapters go (``apply_adapters``), in every layer of a BERT-like encoder:

- ``"houlsby"``: two per layer, on the output of the attention block's projection
  (``attention.output.dense``) and of the feed-forward block's (``output.dense``);
- ``"pfeiffer"``: one per layer, on the feed-forward output only (Pfeiffer et al. 2021,
  "AdapterFusion", §3.1: about as good at half the parameters).

Each sits right after its dense projection, before that sub-layer's dropout, residual and
LayerNorm (``LayerNorm(x + dropout(adapter(dense(h))))``), so every later layer sees its effect.

How it differs from the references, on purpose (one frozen backbone, an exact identity at the start):

- Houlsby et al. also train the LayerNorms of every layer, per task; ours stay frozen and shared,
  so a task owns its adapters and its head only.
- Houlsby's code initialises both adapter matrices near zero (truncated normal, std 1e-3), so a new
  adapter is *nearly* the identity; ours zeroes W_up and b_up, so it is exactly the identity.
- Houlsby's code applies the adapter after the sub-layer's dropout; at inference that is the same,
  in training ours also drops adapter outputs.
- ``"pfeiffer"`` here means only "one adapter, after the feed-forward projection". AdapterHub's
  ``pfeiffer`` (``seq_bn``) configuration also runs the layer's own residual and LayerNorm before
  the adapter (``original_ln_before=True``), uses ReLU and sizes m as H / 16 (``reduction_factor``).

Multi-task adapters keep one frozen backbone and one adapter set per task t; the routing and the
saving of one task come from ``mtl_tutorial.multitask_peft``. A batch may mix tasks, in training too.

Layout, as in ``mtl_tutorial.lora``: the layers (the math), ``apply_adapters`` (where they go), the
multi-task model (the bookkeeping), and ``AdaptersAfterEncoder``, the article's placement kept as a
pitfall to measure.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from mtl_tutorial.multitask_peft import MultiTaskPEFTModel, TaskRoutedLayer, check_task_names, no_target_error

ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}
PLACEMENTS: dict[str, tuple[str, ...]] = {
    "houlsby": ("attention.output.dense", "output.dense"),
    "pfeiffer": ("output.dense",),
}
"""placement -> the projections of each transformer layer that get an adapter (paths inside the layer)."""


def _check_adapter_arguments(bottleneck_size: int, activation: str, hidden_size: int | None = None) -> None:
    sizes = {"bottleneck_size": bottleneck_size} | ({} if hidden_size is None else {"hidden_size": hidden_size})
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; activations are: {', '.join(ACTIVATIONS)}")


class BottleneckAdapter(nn.Module):
    """h + W_up σ(W_down h) (Houlsby et al. 2019, §2.1): (..., H) -> (..., H).

    down: Linear(H, m), initialised as nn.Linear does; up: Linear(m, H), weight and bias zero.
    """

    def __init__(self, hidden_size: int, bottleneck_size: int, activation: str = "gelu") -> None:
        super().__init__()
        _check_adapter_arguments(bottleneck_size, activation, hidden_size)
        self.hidden_size, self.bottleneck_size, self.activation_name = hidden_size, bottleneck_size, activation
        self.down = nn.Linear(hidden_size, bottleneck_size)
        self.activation = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck_size, hidden_size)
        # W_up = 0 and b_up = 0, so W_up σ(W_down h) = 0 and adapter(h) = h exactly at initialisation.
        # W_down stays random: the gradient of W_up, (∂L/∂y) σ(W_down h)ᵀ, is then nonzero from step one.
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.activation(self.down(h)))

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, bottleneck_size={self.bottleneck_size}, activation={self.activation_name!r}"


class MultiTaskBottleneckAdapter(TaskRoutedLayer):
    """One ``BottleneckAdapter`` per task: example i of task t becomes h_i + W_up,t σ(W_down,t h_i).

    adapters: task -> adapter, in a ModuleDict, so a task absent from a batch gets no gradient.
    ``routing`` (set by ``task_routing`` / ``set_active_task``) says whose examples come next.
    """

    def __init__(self, tasks: Sequence[str], hidden_size: int, bottleneck_size: int, activation: str = "gelu") -> None:
        super().__init__()
        check_task_names(tasks)
        self.adapters = nn.ModuleDict(
            {task: BottleneckAdapter(hidden_size, bottleneck_size, activation) for task in tasks}
        )

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.adapters)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h: (B, ..., H) -> (B, ..., H); the batch dimension comes first."""
        routing = self.current_routing(len(h))
        if isinstance(routing, str):
            return self.adapters[routing](h)
        out = h
        for task, positions in routing.items():  # each task's adapter writes the rows of its own examples
            positions = positions.to(h.device)
            out = out.index_copy(0, positions, self.adapters[task](h[positions]))
        return out


class AdaptedLinear(nn.Module):
    """A frozen projection followed by an adapter: y = adapter(base(x)). x: (..., in) -> (..., out)."""

    def __init__(self, base: nn.Linear, adapter: BottleneckAdapter | MultiTaskBottleneckAdapter) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base(x))


def _linear_at(module: nn.Module, path: str) -> nn.Linear | None:
    try:
        found = module.get_submodule(path)
    except AttributeError:
        return None
    return found if isinstance(found, nn.Linear) else None


def transformer_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> module of every BERT-like transformer layer in ``model``: a module with the
    ``nn.Linear`` projections ``attention.output.dense`` and ``output.dense`` (BERT, MiniLM, RoBERTa)."""
    return {
        name: module
        for name, module in model.named_modules()
        if all(_linear_at(module, path) is not None for path in PLACEMENTS["houlsby"])
    }


def adapter_layers(model: nn.Module) -> dict[str, AdaptedLinear]:
    """Module name -> ``AdaptedLinear``, for every adapted projection in ``model``."""
    return {name: module for name, module in model.named_modules() if isinstance(module, AdaptedLinear)}


def apply_adapters(
    model: nn.Module,
    bottleneck_size: int = 64,
    placement: str = "houlsby",
    activation: str = "gelu",
    tasks: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
) -> nn.Module:
    """Put an adapter after the chosen projections of every transformer layer, freeze everything
    else, and return ``model`` (changed in place).

    placement: ``"houlsby"`` (attention and feed-forward outputs) or ``"pfeiffer"`` (feed-forward
    only). ``tasks=None``: one ``BottleneckAdapter`` per place; a list of task names: a
    ``MultiTaskBottleneckAdapter`` (one adapter per task) per place. layers: the indices of the
    transformer layers that get adapters (0 = the lowest; None: all).
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; placements are: {', '.join(PLACEMENTS)}")
    existing = adapter_layers(model)
    if existing:
        raise ValueError(
            f"this model already has {len(existing)} adapters (e.g. in {next(iter(existing))}); apply "
            f"adapters once, or start again from a fresh copy of the backbone (copy.deepcopy before apply_adapters)"
        )
    found = list(transformer_layers(model).values())
    if not found:
        raise no_target_error(
            model, f"BERT-like transformer layer (a module with nn.Linear projections "
            f"{' and '.join(PLACEMENTS['houlsby'])}, e.g. model.encoder.layer[0])"
        )
    if tasks is not None:
        check_task_names(tasks)
    _check_adapter_arguments(bottleneck_size, activation)
    model.requires_grad_(False)
    for layer in _chosen_layers(found, layers):
        for path in PLACEMENTS[placement]:
            parent_path, _, child = path.rpartition(".")
            parent, base = layer.get_submodule(parent_path), _linear_at(layer, path)
            adapter = (
                BottleneckAdapter(base.out_features, bottleneck_size, activation)
                if tasks is None
                else MultiTaskBottleneckAdapter(tasks, base.out_features, bottleneck_size, activation)
            )
            setattr(parent, child, AdaptedLinear(base, adapter.to(base.weight.device, base.weight.dtype)))
    return model


def _chosen_layers(found: list[nn.Module], layers: Sequence[int] | None) -> list[nn.Module]:
    """The transformer layers at indices ``layers`` (all when None), checked."""
    if layers is None:
        return found
    indices = list(layers)
    if not indices or any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(found) for i in indices) \
            or len(set(indices)) != len(indices):
        raise ValueError(f"layers must be distinct layer indices in 0..{len(found) - 1} (this model has {len(found)} "
                         f"transformer layers), e.g. [3, 4, 5] for the top three; got {layers!r}")
    return [found[i] for i in sorted(indices)]


def adapter_parameter_count(num_layers: int, hidden_size: int, bottleneck_size: int, placement: str = "houlsby") -> int:
    """Parameters of one adapter set: (adapters per layer) · L · (2·H·m + m + H); 2 per layer for
    Houlsby, 1 for Pfeiffer."""
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; placements are: {', '.join(PLACEMENTS)}")
    return len(PLACEMENTS[placement]) * num_layers * (2 * hidden_size * bottleneck_size + bottleneck_size + hidden_size)


class MultiTaskAdapterModel(MultiTaskPEFTModel):
    """A frozen trunk with one adapter set per task inside its transformer layers, and one head per task.

    An example of task t runs through task t's adapters in every layer, then head t.
    ``forward(x, "sentiment")`` and ``forward(x, ["sentiment", "pos", ...])`` follow
    ``HardSharingModel`` (a mixed batch returns ``{task: TaskOutput}``), in training too.
    """

    save_format = "mtl_tutorial.adapter.task/1"

    def __init__(
        self,
        trunk: nn.Module,
        heads: Mapping[str, nn.Module],
        bottleneck_size: int = 64,
        placement: str = "houlsby",
        activation: str = "gelu",
        layers: Sequence[int] | None = None,
    ) -> None:
        super().__init__(trunk, heads)
        self.bottleneck_size, self.placement, self.activation = bottleneck_size, placement, activation
        self.layers = None if layers is None else sorted(layers)
        apply_adapters(self.trunk, bottleneck_size, placement, activation, tasks=self.tasks, layers=layers)

    def task_peft_state_dict(self, task: str) -> dict[str, torch.Tensor]:
        """``adapter.<projection>.<down|up>.<weight|bias>`` of task ``task`` in every adapted projection."""
        return {
            f"adapter.{name}.{key}": tensor
            for name, layer in adapter_layers(self.trunk).items()
            for key, tensor in layer.adapter.adapters[task].state_dict(keep_vars=True).items()
        }

    def task_metadata(self) -> dict[str, str]:
        layers = {} if self.layers is None else {"layers": ",".join(map(str, self.layers))}
        return {"bottleneck_size": str(self.bottleneck_size), "placement": self.placement, "activation": self.activation,
                **layers}

    @classmethod
    def arguments_from_metadata(cls, metadata: dict[str, str]) -> dict:
        layers = [int(i) for i in metadata["layers"].split(",")] if "layers" in metadata else None
        return {"bottleneck_size": int(metadata["bottleneck_size"]), "placement": metadata["placement"],
                "activation": metadata["activation"], "layers": layers}


class AdaptersAfterEncoder(nn.Module):
    """The article's ``AdapterModel`` (§5.2.1), a pitfall kept to measure it: one adapter per
    encoder layer, all applied to the *last* hidden state after the frozen encoder has run.

        h_L = encoder(x);  y = adapter_L(... adapter_2(adapter_1(h_L)))

    No transformer layer ever sees an adapter's output: this is a residual MLP stack on frozen
    features, not adapter tuning. The article sizes adapter i with ``encoder.layer[i].output_dim``,
    an attribute BERT layers do not have (AttributeError); here it is ``config.hidden_size``. Takes
    what the encoder takes (``input_ids``, ``attention_mask``, ...) and returns the encoder's output
    with ``last_hidden_state`` replaced by y, so ``TextEncoderTrunk`` can wrap it.
    """

    def __init__(self, encoder: nn.Module, bottleneck_size: int = 64, activation: str = "gelu") -> None:
        super().__init__()
        self.encoder = encoder.requires_grad_(False)
        hidden_size, num_layers = encoder.config.hidden_size, len(encoder.encoder.layer)
        self.adapters = nn.ModuleList(
            [BottleneckAdapter(hidden_size, bottleneck_size, activation) for _ in range(num_layers)]
        )

    def forward(self, **inputs: Any) -> Any:
        output = self.encoder(**inputs)
        hidden = output.last_hidden_state
        for adapter in self.adapters:
            hidden = adapter(hidden)
        output.last_hidden_state = hidden
        return output
