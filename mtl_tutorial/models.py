"""Hard parameter sharing: one shared trunk g_θ, one head f_φt per named task (Caruana, 1997).

    ŷ = f_φt(g_θ(x))   for an example x of task t.

Every task's gradient flows into θ, so the tasks shape one representation; the heads φ_t are
each trained by their own task only. Tasks are named (``"sentiment"``), never numbered, so a
batch cannot silently reach the wrong head.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import torch
from torch import nn

from mtl_tutorial.backbone import mean_pool


class TaskOutput(NamedTuple):
    """The outputs of one task's examples in a mixed batch, and where they sit in that batch.

    outputs: (B_t, ...); positions: (B_t,) long, indices into the batch.
    """

    outputs: torch.Tensor
    positions: torch.Tensor


def select_examples(inputs: Any, positions: torch.Tensor) -> Any:
    """Rows ``positions`` of a batch: a tensor (B, ...), a list of B items, or a dict of those."""
    if isinstance(inputs, torch.Tensor):
        return inputs[positions.to(inputs.device)]
    if isinstance(inputs, Mapping):
        return {key: select_examples(value, positions) for key, value in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return [inputs[i] for i in positions.tolist()]
    raise TypeError(f"cannot select examples from a {type(inputs).__name__}; use a tensor, list or dict")


class HardSharingModel(nn.Module):
    """A shared trunk and one head per named task.

    trunk: x -> shared features (B, H); heads: task name -> module mapping (B, H) to (B, ...).
    ``forward(x, "sentiment")`` runs a single-task batch; ``forward(x, ["sentiment", "pos", ...])``
    (one name per example) runs a mixed batch: the trunk runs once on the whole batch and each
    example's features go to its own task's head. A mixed batch returns
    ``{task: TaskOutput(outputs, positions)}`` in order of first appearance. (The trunk runs on
    the whole batch, so a trunk whose outputs depend on the batch, e.g. BatchNorm in train mode,
    gives other numbers than per-task forwards.)
    """

    def __init__(self, trunk: nn.Module, heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        if not heads:
            raise ValueError("heads is empty; pass one head per task, e.g. {'sentiment': nn.Linear(384, 3)}")
        for name in heads:
            if not isinstance(name, str):
                raise TypeError(f"task names must be strings, got {name!r}")
        self.trunk = trunk
        self.heads = nn.ModuleDict(heads)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.heads)

    def _check_task(self, task: str) -> None:
        if task not in self.heads:
            raise ValueError(f"unknown task {task!r}; tasks are: {', '.join(self.tasks)}")

    def forward(self, x: Any, task: str | Sequence[str]) -> torch.Tensor | dict[str, TaskOutput]:
        if isinstance(task, str):
            self._check_task(task)
            return self.heads[task](self.trunk(x))
        if not isinstance(task, (list, tuple)) or not all(isinstance(name, str) for name in task):
            raise TypeError(
                f"task must be a task name (one of: {', '.join(self.tasks)}) or a list with one "
                f"name per example, got {type(task).__name__}"
                + (f" {task.tolist()!r}" if isinstance(task, torch.Tensor) else "")
                + "; map task ids to names first, e.g. [tasks[i] for i in task_ids.tolist()]"
            )
        for name in dict.fromkeys(task):
            self._check_task(name)
        features = self.trunk(x)
        if len(task) != len(features):
            raise ValueError(
                f"got {len(task)} task names for a batch of {len(features)} examples; pass one per example"
            )
        routed = {}
        for name in dict.fromkeys(task):
            positions = torch.tensor([i for i, t in enumerate(task) if t == name], device=features.device)
            routed[name] = TaskOutput(self.heads[name](features[positions]), positions)
        return routed


def mlp(*sizes: int, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """A multi-layer perceptron: ``mlp(100, 64, 16)`` is Linear(100, 64), ReLU, Linear(64, 16), ReLU.

    Every linear layer is followed by the activation, so the output is a feature vector for a head.
    """
    if len(sizes) < 2:
        raise ValueError(f"mlp needs an input and at least one layer size, got {sizes}")
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), activation()]
    return nn.Sequential(*layers)


class TextEncoderTrunk(nn.Module):
    """A BERT-like encoder as a trunk: a list of B texts -> mean-pooled features (B, H).

    Tokenises inside ``forward`` (padding, truncation to ``max_length``), so batches of raw texts
    from ``MultiTaskDataset`` go straight in. position_offset: the tokens sit at positions
    offset … offset + L − 1 instead of 0 … L − 1 (peft's numbering behind a prefix of P = offset
    virtual tokens, chapter 09).
    """

    def __init__(self, encoder: nn.Module, tokenizer: Any, max_length: int = 128, position_offset: int = 0) -> None:
        super().__init__()
        if not isinstance(position_offset, int) or position_offset < 0:
            raise ValueError(f"position_offset must be an int >= 0, got {position_offset!r}")
        self.encoder, self.tokenizer, self.max_length = encoder, tokenizer, max_length
        self.position_offset = position_offset

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            raise TypeError("TextEncoderTrunk expects a list of texts, not a single string; wrap it: [text]")
        device = next(self.encoder.parameters()).device
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        if self.position_offset:
            length = batch["input_ids"].shape[1]
            batch["position_ids"] = torch.arange(self.position_offset, self.position_offset + length, device=device).expand(len(texts), -1)
        return mean_pool(self.encoder(**batch).last_hidden_state, batch["attention_mask"])


def train_top_layers(encoder: nn.Module, num_layers: int) -> nn.Module:
    """Freeze a BERT-like encoder except its top ``num_layers`` transformer layers; returns it.

    ``num_layers=0`` freezes everything (a frozen trunk); the embeddings and lower layers stay
    frozen in every case. Expects ``encoder.encoder.layer`` (BERT, MiniLM, RoBERTa).
    """
    layers = encoder.encoder.layer
    if not 0 <= num_layers <= len(layers):
        raise ValueError(f"num_layers must be between 0 and {len(layers)}, got {num_layers}")
    encoder.requires_grad_(False)
    for layer in layers[len(layers) - num_layers :]:
        layer.requires_grad_(True)
    return encoder
