"""Prefix-tuning from scratch: trainable keys and values in front of every attention layer.

Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation", §4.2: a frozen
transformer whose every layer l attends, besides its L tokens, to P trainable "virtual tokens".
With the layer's own frozen projections Q, K, V of the tokens (B, heads, L, d) and the prefix
keys and values P_k^l, P_v^l (heads, P, d), one attention head computes

    head = softmax(Q [P_k^l ; K]ᵀ / √d + [0 ; mask]) [P_v^l ; V]        ([a ; b]: a before b)

so the output keeps the input's length L, and the prefix positions are always attended (padding
only masks real tokens). Trainable: P · num_layers · 2 · hidden numbers, nothing else.

Reparameterisation (Li & Liang §4.3): training the prefix P_θ directly was unstable for them, so
they train P_θ[i] = MLP(E[i]) with a learned embedding E (P, hidden) and a shared two-layer MLP;
after training only P_θ is kept (``PrefixEncoder.to_direct``). Each position i has its own row E[i]:
the source article's "JAX" ``PrefixEmbed`` instead feeds its MLP a zero vector, so every position
gets the same prefix (and it tiles torch modules through jnp, which cannot run).

How it differs from peft's ``PrefixTuningConfig`` on BERT: peft hands the prefix to BERT as a cache
of P *earlier* tokens, so BERT numbers the real tokens P … P + L − 1 (and inputs may have at most
512 − P tokens); ours keeps BERT's own positions 0 … L − 1, the position embeddings it was pretrained
with. With the same prefix, the outputs therefore differ (by 1e-3 to 1e-2 in MiniLM's logits,
chapter 09) unless ours is called with ``position_ids = P … P + L − 1``; then they agree to float
rounding.

Prompt tuning (Lester et al. 2021), for contrast: P trainable vectors in front of the *input*
embeddings only (``PromptTunedEncoder``); the layers see them through attention, nothing is added
inside the layers.

Layout, as in peft: the layers (``PrefixEncoder``, ``PrefixSelfAttention``), the injection
(``apply_prefix``, ``prefix_from_text``), the bookkeeping (``MultiTaskPrefixModel``, ``copy_to_peft``), a measurement
(``PrefixStepRecorder``: how far P_θ moves per optimizer step), then prompt tuning
(``PromptTunedEncoder``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtl_tutorial.multitask_peft import MultiTaskPEFTModel, TaskRoutedLayer, check_task_names, no_target_error

if TYPE_CHECKING:
    from transformers.modeling_outputs import BaseModelOutput

_UNSUPPORTED_ATTENTION_ARGUMENTS = ("past_key_values", "past_key_value", "cache", "encoder_hidden_states", "head_mask")


def prefix_parameter_count(
    num_layers: int, hidden_size: int, num_virtual_tokens: int, projection_hidden: int | None = None
) -> int:
    """Trainable numbers of one task's prefix, with N = num_layers, H = hidden_size, P, M = projection_hidden:

    direct:            P · N · 2H
    reparameterised:   P · H  +  (H · M + M)  +  (M · N · 2H + N · 2H)      (embedding E, MLP layer 1, layer 2)
    """
    flat = num_layers * 2 * hidden_size
    if projection_hidden is None:
        return num_virtual_tokens * flat
    return num_virtual_tokens * hidden_size + (hidden_size + 1) * projection_hidden + (projection_hidden + 1) * flat


class PrefixEncoder(nn.Module):
    """The prefixes of one task: for each of N layers, P key and P value vectors per head.

    All of them sit in one matrix P_θ (P, N · 2 · hidden), laid out as peft does: row i viewed as
    (2N, heads, head_dim) holds layer l's key at 2l and its value at 2l + 1.

    - direct (``projection_hidden=None``): P_θ = ``prefix``, trained as is, initialised N(0, 1) as
      peft does (the frozen keys of MiniLM have a standard deviation of about 1).
    - reparameterised (Li & Liang §4.3): P_θ[i] = W₂ tanh(W₁ E[i] + b₁) + b₂, with ``embedding`` E
      (P, hidden) and ``transform`` = Linear(hidden, M), Tanh, Linear(M, N · 2 · hidden) (peft's
      ``prefix_projection=True``). Chapter 09 measures which Adam step sizes it trains at, and how
      far its P_θ moves per step (``PrefixStepRecorder``), against the direct prefix.
    """

    def __init__(
        self,
        num_layers: int,
        num_heads: int,
        head_dim: int,
        num_virtual_tokens: int,
        projection_hidden: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in [("num_layers", num_layers), ("num_heads", num_heads), ("head_dim", head_dim),
                            ("num_virtual_tokens", num_virtual_tokens)]:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if projection_hidden is not None and (not isinstance(projection_hidden, int) or projection_hidden < 1):
            raise ValueError(f"projection_hidden must be None (direct prefixes) or an int >= 1, got {projection_hidden!r}")
        self.num_layers, self.num_heads, self.head_dim = num_layers, num_heads, head_dim
        self.num_virtual_tokens, self.projection_hidden = num_virtual_tokens, projection_hidden
        hidden, flat = num_heads * head_dim, num_layers * 2 * num_heads * head_dim
        if projection_hidden is None:
            self.prefix = nn.Parameter(torch.randn(num_virtual_tokens, flat))
        else:
            self.embedding = nn.Parameter(torch.randn(num_virtual_tokens, hidden))  # one row per position
            self.transform = nn.Sequential(nn.Linear(hidden, projection_hidden), nn.Tanh(), nn.Linear(projection_hidden, flat))

    def flat(self) -> torch.Tensor:
        """P_θ: (P, N · 2 · hidden), the layout of peft's prefix embedding."""
        return self.prefix if self.projection_hidden is None else self.transform(self.embedding)

    def forward(self, layer: int, batch_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of layer ``layer``: two (1, heads, P, head_dim) tensors, broadcast over the batch.

        ``batch_size`` is not needed here (every example gets the same prefix); it keeps the call the
        same as ``MultiTaskPrefixEncoder``'s.
        """
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"layer {layer} is out of range for a prefix of {self.num_layers} layers")
        per_layer = self.flat().view(self.num_virtual_tokens, 2 * self.num_layers, self.num_heads, self.head_dim)
        keys_values = per_layer[:, 2 * layer : 2 * layer + 2].permute(1, 2, 0, 3)  # (2, heads, P, head_dim)
        return keys_values[0:1], keys_values[1:2]

    @torch.no_grad()
    def to_direct(self) -> PrefixEncoder:
        """A direct encoder holding this one's P_θ: after training, Li & Liang keep only the prefix."""
        flat = self.flat()
        direct = PrefixEncoder(self.num_layers, self.num_heads, self.head_dim, self.num_virtual_tokens).to(flat.device)
        direct.prefix.copy_(flat)
        return direct.train(self.training)

    def extra_repr(self) -> str:
        return (f"num_layers={self.num_layers}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"num_virtual_tokens={self.num_virtual_tokens}, projection_hidden={self.projection_hidden}")


class MultiTaskPrefixEncoder(TaskRoutedLayer):
    """One ``PrefixEncoder`` per task; example i of a batch gets the prefix of its own task.

    Its ``routing`` (set by ``task_routing`` / ``set_active_task``, see ``multitask_peft``) says
    which task each example belongs to; a task absent from the batch gets no gradient.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        num_layers: int,
        num_heads: int,
        head_dim: int,
        num_virtual_tokens: int,
        projection_hidden: int | None = None,
    ) -> None:
        super().__init__()
        check_task_names(tasks)
        self.encoders = nn.ModuleDict(
            {task: PrefixEncoder(num_layers, num_heads, head_dim, num_virtual_tokens, projection_hidden) for task in tasks}
        )
        self.num_virtual_tokens, self.projection_hidden = num_virtual_tokens, projection_hidden

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.encoders)

    def forward(self, layer: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of layer ``layer``: (1, heads, P, head_dim) for a single-task batch,
        (B, heads, P, head_dim) for a mixed one (row i: the prefix of example i's task)."""
        routing = self.current_routing(batch_size)
        if isinstance(routing, str):
            return self.encoders[routing](layer)
        keys = values = None
        for task, positions in routing.items():
            task_keys, task_values = self.encoders[task](layer)
            if keys is None:
                keys = task_keys.new_zeros(batch_size, *task_keys.shape[1:])
                values = task_values.new_zeros(batch_size, *task_values.shape[1:])
            positions = positions.to(task_keys.device)
            keys = keys.index_copy(0, positions, task_keys.expand(len(positions), -1, -1, -1))
            values = values.index_copy(0, positions, task_values.expand(len(positions), -1, -1, -1))
        return keys, values


def extend_attention_mask(attention_mask: torch.Tensor | None, num_virtual_tokens: int) -> torch.Tensor | None:
    """The mask over [prefix ; tokens]: the P prefix positions are attended by every query.

    attention_mask: None (attend everywhere), boolean (True = attend) or additive float (0 = attend,
    very negative = masked), of shape (B|1, 1, L|1, L) as transformers builds it -> (..., P + L).
    """
    if attention_mask is None:
        return None
    if attention_mask.dim() != 4:
        raise ValueError(
            f"expected the 4D attention mask (batch, 1, queries, keys) that BERT passes to its attention "
            f"layers, got shape {tuple(attention_mask.shape)}"
        )
    attend = True if attention_mask.dtype == torch.bool else 0.0
    prefix = attention_mask.new_full((*attention_mask.shape[:-1], num_virtual_tokens), attend)
    return torch.cat([prefix, attention_mask], dim=-1)


class PrefixSelfAttention(nn.Module):
    """A frozen BERT self-attention whose keys and values start with its layer's prefix (module docstring).

    base: the layer's ``BertSelfAttention`` (its query, key and value projections are used, frozen);
    prefix_encoder: a ``PrefixEncoder`` or ``MultiTaskPrefixEncoder`` registered on the model once
    (this layer keeps a reference, not a submodule). hidden_states (B, L, hidden) -> (B, L, hidden).
    The signature takes only what an encoder's self-attention needs, so it does not depend on
    transformers' name for the cache argument (``past_key_values`` until 5.23, ``cache`` from 5.24).
    """

    def __init__(self, base: nn.Module, layer: int, prefix_encoder: nn.Module) -> None:
        super().__init__()
        self.base, self.layer = base, layer
        self.__dict__["prefix_encoder"] = prefix_encoder  # a plain reference: the parameters are registered once, on the model
        self.train(base.training)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> tuple[torch.Tensor, None]:
        used = [name for name in _UNSUPPORTED_ATTENTION_ARGUMENTS if kwargs.get(name) is not None]
        if used or kwargs.get("output_attentions"):
            raise ValueError(
                f"prefix attention supports encoders only, without {', '.join(used) or 'output_attentions'}; "
                f"call the encoder with input_ids and attention_mask"
            )
        base = self.base
        batch_size, length, _ = hidden_states.shape
        heads, head_dim = base.num_attention_heads, base.attention_head_size
        query = base.query(hidden_states).view(batch_size, length, heads, head_dim).transpose(1, 2)  # (B, heads, L, d)
        key = base.key(hidden_states).view(batch_size, length, heads, head_dim).transpose(1, 2)
        value = base.value(hidden_states).view(batch_size, length, heads, head_dim).transpose(1, 2)
        prefix_key, prefix_value = self.prefix_encoder(self.layer, batch_size)  # (B|1, heads, P, d)
        key = torch.cat([prefix_key.to(key.dtype).expand(batch_size, -1, -1, -1), key], dim=2)  # (B, heads, P + L, d)
        value = torch.cat([prefix_value.to(value.dtype).expand(batch_size, -1, -1, -1), value], dim=2)
        output = F.scaled_dot_product_attention(
            query, key, value,
            attn_mask=extend_attention_mask(attention_mask, prefix_key.shape[2]),
            dropout_p=base.dropout.p if self.training else 0.0,
            scale=head_dim**-0.5,
        )
        return output.transpose(1, 2).reshape(batch_size, length, heads * head_dim), None

    def extra_repr(self) -> str:
        return f"layer={self.layer}"


def _is_self_attention(module: nn.Module) -> bool:
    """A BERT-style self-attention: query, key and value linear layers and a head layout."""
    return all(isinstance(getattr(module, name, None), nn.Linear) for name in ("query", "key", "value")) and all(
        hasattr(module, name) for name in ("num_attention_heads", "attention_head_size", "dropout")
    )


def apply_prefix(
    model: nn.Module,
    num_virtual_tokens: int = 10,
    projection_hidden: int | None = None,
    tasks: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
) -> nn.Module:
    """Give every self-attention layer of a BERT-like ``model`` a prefix, freeze everything else, and
    return ``model`` (changed in place).

    Each ``BertSelfAttention`` becomes a ``PrefixSelfAttention`` around it; the prefix parameters are
    registered once, as ``model.prefix_encoder``: a ``PrefixEncoder`` (``tasks=None``) or a
    ``MultiTaskPrefixEncoder`` (one prefix per task). ``projection_hidden``: the width M of the
    reparameterising MLP, or None for direct prefixes. ``layers``: the self-attention layers that get
    a prefix, counted from 0 at the input (None: all); the prefix encoder then holds len(layers)
    layers, its layer i belonging to ``layers[i]``.
    """
    if any(isinstance(module, PrefixSelfAttention) for module in model.modules()):
        raise ValueError(
            f"this {type(model).__name__} already has prefix attention layers; apply prefixes once, or start "
            f"again from a fresh copy of the backbone (copy.deepcopy before apply_prefix)"
        )
    targets = [(name, module) for name, module in model.named_modules() if _is_self_attention(module)]
    if not targets:
        raise no_target_error(
            model, "BERT-style self-attention (a module with query, key and value nn.Linear layers, as in "
            "BERT, MiniLM, RoBERTa)"
        )
    targets = [targets[i] for i in _chosen_layers(layers, len(targets))]
    first = targets[0][1]
    for name, module in targets:
        if getattr(module, "is_decoder", False) or getattr(module, "position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{name} is a decoder or uses relative positions; apply_prefix supports encoders with absolute positions")
        if (module.num_attention_heads, module.attention_head_size) != (first.num_attention_heads, first.attention_head_size):
            raise ValueError(f"{name} has another head layout than {targets[0][0]}; every layer must have the same")
    shape = (len(targets), first.num_attention_heads, first.attention_head_size, num_virtual_tokens, projection_hidden)
    encoder = PrefixEncoder(*shape) if tasks is None else MultiTaskPrefixEncoder(tasks, *shape)
    model.requires_grad_(False)
    model.prefix_encoder = encoder.to(first.query.weight.device).train(model.training)
    for layer, (name, module) in enumerate(targets):
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, PrefixSelfAttention(module, layer, encoder))
    return model


def _chosen_layers(layers: Sequence[int] | None, count: int) -> list[int]:
    """The self-attention layers ``layers`` names (all ``count`` when None), checked: distinct and increasing,
    so that the prefix encoder's layer i belongs to the i-th of them."""
    if layers is None:
        return list(range(count))
    chosen = list(layers)
    if not chosen or len(set(chosen)) != len(chosen) or not all(
            isinstance(i, int) and 0 <= i < count for i in chosen) or chosen != sorted(chosen):
        raise ValueError(f"layers must be distinct increasing layer numbers from 0 to {count - 1} (this model "
                         f"has {count} self-attention layers), got {layers!r}; e.g. the top 3: "
                         f"{list(range(count - 3, count))}")
    return chosen


@torch.no_grad()
def prefix_from_text(model: nn.Module, tokenizer, text: str, num_virtual_tokens: int,
                     layers: Sequence[int] | None = None) -> torch.Tensor:
    """A prefix initialised from real words (Li & Liang §7.2): the frozen ``model``'s own keys and values
    of the first P tokens of ``text`` in every self-attention layer (or in ``layers``), laid out as
    ``PrefixEncoder.flat``: row i = [k₀ᵢ ; v₀ᵢ ; k₁ᵢ ; v₁ᵢ ; …], shape (P, len(layers) · 2 · hidden).

    ``model``: a BERT-like encoder without prefixes (run in eval mode, so no dropout and no random state
    is used). Copy the result into ``PrefixEncoder.prefix``.
    """
    targets = [module for module in model.modules() if _is_self_attention(module)]
    if not targets:
        raise no_target_error(model, "BERT-style self-attention (query, key and value nn.Linear layers)")
    chosen = _chosen_layers(layers, len(targets))
    encoded = tokenizer(text, return_tensors="pt").to(targets[0].query.weight.device)
    if encoded["input_ids"].shape[1] < num_virtual_tokens:
        raise ValueError(f"the text has {encoded['input_ids'].shape[1]} tokens, fewer than the {num_virtual_tokens} "
                         f"virtual tokens to initialise: use a longer text or a smaller P")
    captured: dict[tuple[int, str], torch.Tensor] = {}
    hooks = [getattr(targets[layer], kind).register_forward_hook(
                 lambda module, inputs, output, key=(layer, kind): captured.__setitem__(key, output[0, :num_virtual_tokens]))
             for layer in chosen for kind in ("key", "value")]
    was_training = model.training
    try:
        model.eval()(**encoded)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return torch.cat([captured[layer, kind] for layer in chosen for kind in ("key", "value")], dim=1)


class MultiTaskPrefixModel(MultiTaskPEFTModel):
    """Multi-task prefix-tuning: a frozen trunk whose every self-attention layer holds one prefix per
    task, and one head per task.

    An example of task t attends to task t's prefixes in every layer, then goes to head t.
    ``forward(x, "sentiment")`` and ``forward(x, ["sentiment", "pos", ...])`` follow
    ``HardSharingModel``, in training too (a mixed batch gives each example its own task's prefix).
    trunk: e.g. ``TextEncoderTrunk(backbone, tokenizer)``. layers: the layers that get prefixes (None:
    all; ``apply_prefix``).
    """

    save_format = "mtl_tutorial.prefix.task/1"

    def __init__(
        self,
        trunk: nn.Module,
        heads: Mapping[str, nn.Module],
        num_virtual_tokens: int = 10,
        projection_hidden: int | None = None,
        layers: Sequence[int] | None = None,
    ) -> None:
        super().__init__(trunk, heads)
        self.prefixed_layers = None if layers is None else list(layers)
        apply_prefix(self.trunk, num_virtual_tokens, projection_hidden, tasks=self.tasks, layers=layers)

    def task_peft_state_dict(self, task: str) -> dict[str, torch.Tensor]:
        """``prefix.prefix`` (P, N · 2 · hidden), or ``prefix.embedding`` and ``prefix.transform.*``
        when reparameterised: the prefix parameters of task ``task``."""
        encoder = self.trunk.prefix_encoder.encoders[task]
        return {f"prefix.{name}": tensor for name, tensor in encoder.state_dict(keep_vars=True).items()}

    def task_metadata(self) -> dict[str, str]:
        encoder = self.trunk.prefix_encoder
        return {"num_virtual_tokens": str(encoder.num_virtual_tokens), "projection_hidden": str(encoder.projection_hidden),
                "layers": json.dumps(self.prefixed_layers)}

    @classmethod
    def arguments_from_metadata(cls, metadata: dict[str, str]) -> dict:
        projection = metadata["projection_hidden"]
        return {"num_virtual_tokens": int(metadata["num_virtual_tokens"]),
                "projection_hidden": None if projection == "None" else int(projection),
                "layers": json.loads(metadata.get("layers", "null"))}


def copy_to_peft(encoder: PrefixEncoder, peft_model: nn.Module, adapter_name: str = "default") -> None:
    """Copy our prefix into the prefix-tuning adapter ``adapter_name`` of a peft model built on the same
    backbone: peft's ``embedding.weight`` is our ``prefix`` (direct) or ``embedding`` (reparameterised,
    then its ``transform`` is ours too)."""
    from peft import PeftType

    config = peft_model.peft_config.get(adapter_name)
    if config is None or config.peft_type != PeftType.PREFIX_TUNING:
        raise ValueError(f"peft model has no prefix-tuning adapter {adapter_name!r}; build it with PrefixTuningConfig")
    reparameterised = encoder.projection_hidden is not None
    if config.prefix_projection != reparameterised or config.num_virtual_tokens != encoder.num_virtual_tokens:
        raise ValueError(
            f"peft's adapter has num_virtual_tokens={config.num_virtual_tokens}, prefix_projection="
            f"{config.prefix_projection}; ours needs PrefixTuningConfig(num_virtual_tokens={encoder.num_virtual_tokens}, "
            f"prefix_projection={reparameterised}"
            + (f", encoder_hidden_size={encoder.projection_hidden})" if reparameterised else ")")
        )
    target = peft_model.prompt_encoder[adapter_name]
    with torch.no_grad():
        if reparameterised:
            target.embedding.weight.copy_(encoder.embedding)
            target.transform.load_state_dict(encoder.transform.state_dict())
        else:
            target.embedding.weight.copy_(encoder.prefix)


class PrefixStepRecorder:
    """How far each task's effective prefix P_θ moves per optimizer step, read off the optimizer:
    ``with PrefixStepRecorder(model.trunk.prefix_encoder, optimizer) as steps: train(...)``.

    After optimizer step k (k = 1, 2, …), for every task t:

        entry_rms[t][k-1]      = ‖P_θ(k) − P_θ(k−1)‖ / √(P · N · 2H)     (root mean square change of one entry)
        parameter_step[t][k-1] = mean |θ(k) − θ(k−1)|                     (over the task's trained numbers)

    θ is P_θ itself for a direct prefix and (E, W₁, b₁, W₂, b₂) for a reparameterised one, so the
    second list shows the optimizer's step per number and the first what it does to the prefix the
    layers read. ``mean_abs[t]`` = (mean |P_θ| entry at the start, at the end). The measurement reads
    the parameters under ``torch.no_grad`` and touches no random state: a recorded run trains exactly
    as an unrecorded one.
    """

    def __init__(self, prefix_encoder: PrefixEncoder | MultiTaskPrefixEncoder, optimizer: torch.optim.Optimizer) -> None:
        if isinstance(prefix_encoder, PrefixEncoder):
            self.encoders = {"prefix": prefix_encoder}
        elif isinstance(prefix_encoder, MultiTaskPrefixEncoder):
            self.encoders = dict(prefix_encoder.encoders.items())
        else:
            raise TypeError(f"expected a PrefixEncoder or MultiTaskPrefixEncoder (model.trunk.prefix_encoder of a "
                            f"MultiTaskPrefixModel), got {type(prefix_encoder).__name__}")
        self.optimizer = optimizer
        self.entry_rms: dict[str, list[float]] = {task: [] for task in self.encoders}
        self.parameter_step: dict[str, list[float]] = {task: [] for task in self.encoders}
        self.mean_abs: dict[str, tuple[float, float]] = {}

    @torch.no_grad()
    def _snapshot(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """task -> (P_θ, all its trained numbers as one vector), copied."""
        return {task: (encoder.flat().detach().clone(),
                       torch.cat([p.detach().reshape(-1) for p in encoder.parameters()]).clone())
                for task, encoder in self.encoders.items()}

    @torch.no_grad()
    def _after_step(self, *_: object) -> None:
        now = self._snapshot()
        for task, (prefix, numbers) in now.items():
            last_prefix, last_numbers = self._last[task]
            self.entry_rms[task].append((prefix - last_prefix).pow(2).mean().sqrt().item())
            self.parameter_step[task].append((numbers - last_numbers).abs().mean().item())
        self._last = now

    def __enter__(self) -> PrefixStepRecorder:
        self._last = self._snapshot()
        self._start = {task: prefix.abs().mean().item() for task, (prefix, _) in self._last.items()}
        self._handle = self.optimizer.register_step_post_hook(self._after_step)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()
        self.mean_abs = {task: (self._start[task], prefix.abs().mean().item()) for task, (prefix, _) in self._last.items()}

    def summary(self, digits: int = 4) -> dict[str, dict]:
        """The recorded lists as JSON-able values with ``digits`` significant digits (for a results line)."""
        def short(value: float) -> float:
            return float(f"{value:.{digits}g}")

        return {"entry_rms": {t: [short(v) for v in values] for t, values in self.entry_rms.items()},
                "parameter_step": {t: [short(v) for v in values] for t, values in self.parameter_step.items()},
                "mean_abs": {t: [short(v) for v in values] for t, values in self.mean_abs.items()}}


class PromptTunedEncoder(nn.Module):
    """A frozen BERT-like encoder with P trainable input vectors in front of every input
    (prompt tuning, Lester et al. 2021):

        inputs_embeds = [prompt ; word_embeddings(input_ids)]   (B, P + L, hidden),   mask [1 … 1 ; mask]

    The encoder adds its position and token-type embeddings to all P + L vectors, as peft's prompt
    tuning does (the tokens sit at positions P … P + L - 1). The prompt starts as P word embeddings
    drawn from the vocabulary (Lester et al. §3.2). Returns ``.last_hidden_state`` (B, L, hidden) of
    the L real tokens only, so it can replace the encoder of ``TextEncoderTrunk``.
    """

    def __init__(self, encoder: nn.Module, num_virtual_tokens: int = 10) -> None:
        super().__init__()
        if not isinstance(num_virtual_tokens, int) or num_virtual_tokens < 1:
            raise ValueError(f"num_virtual_tokens must be an int >= 1, got {num_virtual_tokens!r}")
        embeddings = encoder.get_input_embeddings() if hasattr(encoder, "get_input_embeddings") else None
        if not isinstance(embeddings, nn.Embedding):
            raise no_target_error(encoder, "word embedding (the nn.Embedding that get_input_embeddings() of a transformers model returns)")
        self.encoder = encoder.requires_grad_(False)
        words = embeddings.weight
        self.prompt = nn.Parameter(words[torch.randint(len(words), (num_virtual_tokens,))].detach().clone())
        self.train(encoder.training)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> BaseModelOutput:
        from transformers.modeling_outputs import BaseModelOutput

        batch_size, num_prompt = len(input_ids), len(self.prompt)
        words = self.encoder.get_input_embeddings()(input_ids)  # (B, L, hidden)
        inputs_embeds = torch.cat([self.prompt.to(words.dtype).expand(batch_size, -1, -1), words], dim=1)
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask.new_ones(batch_size, num_prompt), attention_mask], dim=1)
        if token_type_ids is not None:
            token_type_ids = torch.cat([token_type_ids.new_zeros(batch_size, num_prompt), token_type_ids], dim=1)
        hidden = self.encoder(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, token_type_ids=token_type_ids, **kwargs
        ).last_hidden_state
        return BaseModelOutput(last_hidden_state=hidden[:, num_prompt:])
