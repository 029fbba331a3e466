"""Multi-task instruction tuning of a decoder: every task as text, a loss on the answers only.

The article's §1.3.3 and §2.3 (chapter 12, planned): a decoder LLM learns several tasks at once when
each example of task t becomes a prompt p (the task's instruction and the input, in the model's chat
format) and an answer a (the label as words). The model reads p and a as one sequence x = p ‖ a and is
trained to predict the answer's tokens only:

    L_t(θ) = − (1/N_t) Σ_{i ∈ t} Σ_{k ∈ answer(i)} log p_θ(x_{i,k} | x_{i,<k}),    N_t: answer tokens of task t

a mean over answer tokens, not over examples; the joint objective is Σ_t λ_t L_t (chapter 01). The
prompt is context, not a target: its positions get the label −100, which the loss ignores, as the
padding does. (Training on the prompt too is a common slip: the model then spends its capacity on
copying instructions, and a task with long inputs dominates the loss.)

A decoder answers a classification task without generating free text: score each option o
(its answer tokens, end-of-turn included) given the prompt,

    s(o | p) = Σ_k log p_θ(o_k | p, o_<k)

and predict argmax_o s(o | p). The sum, not the mean: s is the log-probability of the whole answer,
the quantity greedy decoding compares; with the end-of-turn token in o, an option that is a prefix of
another ("good" / "good enough") is scored as a complete answer.

Tokens are ids (lists of ints) here: turning text into ids is the tokenizer's job (``chat_prompt_ids``
for prompts, ``answer_ids`` for answers), so the functions below work with any tokenizer and are checked against transformers'
own causal-LM loss in tests/test_instruction.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtl_tutorial.models import TaskOutput

IGNORE_INDEX = -100
"""The label of a position that is not a target (prompt and padding): PyTorch's and transformers' default."""


@dataclass
class InstructionBatch:
    """Right-padded prompt ‖ answer sequences: ``input_ids``, ``attention_mask`` and ``labels``, each (B, L).

    labels[i, j] = input_ids[i, j] on answer tokens, ``IGNORE_INDEX`` on the prompt (unless built with
    ``prompt_loss``) and the padding.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    @property
    def inputs(self) -> torch.Tensor:
        """(B, 2, L): ``input_ids`` and ``attention_mask`` stacked, what ``InstructionModel`` takes."""
        return torch.stack([self.input_ids, self.attention_mask], 1)


def chat_prompt_ids(tokenizer, prompt: str, system: str | None = None) -> list[int]:
    """The ids of ``prompt`` as a user turn in the tokenizer's chat template, up to the assistant's turn.

    What the model sees before it answers; the answer's ids follow it directly (``collate_answers``).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"{type(tokenizer).__name__} has no chat template, so it cannot say where the assistant's answer "
            f"starts; use an instruction-tuned model's tokenizer (SmolLM2-135M-Instruct has one) or set "
            f"tokenizer.chat_template"
        )
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def answer_ids(tokenizer, answer: str) -> list[int]:
    """The ids of ``answer`` followed by the end-of-turn token (``tokenizer.eos_token_id``).

    The model learns to stop after the answer, and an option scored with it is a whole answer.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{type(tokenizer).__name__} has no eos_token, so an answer cannot end; set tokenizer.eos_token")
    ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
    if not ids:
        raise ValueError(f"answer {answer!r} has no tokens: give each class some words")
    return ids + [tokenizer.eos_token_id]


def collate_answers(
    prompt_ids: Sequence[Sequence[int]],
    answer_ids: Sequence[Sequence[int]],
    pad_id: int,
    max_length: int | None = None,
    pad_to: int | None = None,
    prompt_loss: bool = False,
) -> InstructionBatch:
    """Join each prompt with its answer, mask the prompt out of the labels, pad on the right.

    prompt_ids[i], answer_ids[i]: token ids of example i (the answer with its end-of-turn token).
    Returns an ``InstructionBatch`` of length L = ``pad_to`` or max_i (|p_i| + |a_i|). Right padding
    keeps every example's positions 0, 1, ... as without padding (a causal model never attends forward).
    prompt_loss=True makes the prompt's tokens targets too: the slip the module docstring names, kept
    so that a study can measure what it costs.
    """
    if len(prompt_ids) != len(answer_ids):
        raise ValueError(f"got {len(prompt_ids)} prompts but {len(answer_ids)} answers; give one answer per prompt")
    if not prompt_ids:
        raise ValueError("no examples: give at least one prompt and its answer")
    lengths = []
    for i, (prompt, answer) in enumerate(zip(prompt_ids, answer_ids)):
        if not answer:
            raise ValueError(f"example {i} has no answer tokens, so there is nothing to learn from it; "
                             f"tokenize its label (and the end-of-turn token) as its answer")
        if not prompt:
            raise ValueError(f"example {i} has an empty prompt: the first answer token would have no context")
        lengths.append(len(prompt) + len(answer))
        if max_length is not None and lengths[-1] > max_length:
            raise ValueError(
                f"example {i} is {lengths[-1]} tokens ({len(prompt)} prompt + {len(answer)} answer), over "
                f"max_length = {max_length}; shorten its input text before building the prompt (cutting the "
                f"sequence would cut the answer) or raise max_length"
            )
    length = max(lengths) if pad_to is None else pad_to
    if length < max(lengths):
        raise ValueError(f"pad_to = {pad_to} is shorter than the longest example ({max(lengths)} tokens); "
                         f"pad to at least that, or leave pad_to out")
    input_ids = torch.full((len(lengths), length), pad_id, dtype=torch.long)
    labels = torch.full((len(lengths), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(lengths), length), dtype=torch.long)
    for i, (prompt, answer) in enumerate(zip(prompt_ids, answer_ids)):
        n, m = len(prompt), len(answer)
        input_ids[i, :n + m] = torch.tensor([*prompt, *answer], dtype=torch.long)
        start = 0 if prompt_loss else n
        labels[i, start:n + m] = input_ids[i, start:n + m]
        attention_mask[i, :n + m] = 1
    return InstructionBatch(input_ids, attention_mask, labels)


def _shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits at positions 0..L-2, the tokens they predict at 1..L-1): position j predicts token j + 1.

    labels may be longer than the logits (``InstructionModel`` drops the padding columns at the end):
    the extra columns must be ``IGNORE_INDEX``.
    """
    if logits.dim() != 3 or labels.dim() != 2 or labels.shape[0] != logits.shape[0] or labels.shape[1] < logits.shape[1]:
        raise ValueError(f"logits must be (B, L, V) and labels (B, L), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if (labels[:, logits.shape[1]:] != IGNORE_INDEX).any():
        raise ValueError(f"labels (B, {labels.shape[1]}) have targets past the logits' {logits.shape[1]} positions")
    return logits[:, :-1], labels[:, 1:logits.shape[1]]


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens of a batch: logits (B, L, V), labels (B, L) -> 0-dim.

    −(1/N) Σ_{(i,j): labels[i,j+1] ≠ −100} log softmax(logits[i,j])[labels[i,j+1]], N the number of
    answer tokens in the batch (a long answer weighs more than a short one, as in transformers' loss).
    """
    logits, targets = _shifted(logits, labels)
    if not (targets != IGNORE_INDEX).any():
        raise ValueError("the batch has no answer tokens (every label is -100): build it with collate_answers")
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)


def answer_log_likelihoods(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(answer_i | prompt_i) for each row: logits (B, L, V), labels (B, L) -> (B,).

    Σ_j log softmax(logits[i,j])[labels[i,j+1]] over the row's answer tokens (no mean: ``s(o | p)``).
    """
    logits, targets = _shifted(logits, labels)
    rows, positions = (targets != IGNORE_INDEX).nonzero(as_tuple=True)   # the answer tokens only: a few per row
    picked = logits[rows, positions].float().log_softmax(-1)              # (answer tokens, V)
    token_log_probs = picked.gather(-1, targets[rows, positions].unsqueeze(-1)).squeeze(-1)
    return torch.zeros(len(targets), device=logits.device).index_add_(0, rows, token_log_probs)


@torch.no_grad()
def option_scores(
    model: nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    option_ids: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 32,
) -> torch.Tensor:
    """s(o_k | p_i) for every prompt and option: (N, K), rows prompts, columns options.

    model: a causal LM called as ``model(input_ids=, attention_mask=)`` returning ``.logits``
    (transformers' ``*ForCausalLM``); the N·K sequences p_i ‖ o_k run ``batch_size`` at a time on the
    model's device. Predict with ``option_scores(...).argmax(1)``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not prompt_ids:
        raise ValueError("no prompts to score: give at least one")
    if not option_ids or any(not option for option in option_ids):
        raise ValueError("give at least one option, each with at least one token (its answer ids)")
    pairs = [(prompt, option) for prompt in prompt_ids for option in option_ids]
    device = next(model.parameters()).device
    scores = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        batch = collate_answers([p for p, _ in chunk], [o for _, o in chunk], pad_id)
        logits = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)).logits
        scores.append(answer_log_likelihoods(logits, batch.labels.to(device)).cpu())
    return torch.cat(scores).view(len(prompt_ids), len(option_ids))


CONTENT_FREE_TEXTS = ("N/A", "", "[MASK]")
"""Inputs that say nothing, put where a task's text goes, to measure what the model answers regardless (Zhao et al. 2021)."""


def calibrated_scores(scores: torch.Tensor, content_free: torch.Tensor) -> torch.Tensor:
    """Contextual calibration (Zhao et al. 2021, "Calibrate before use"): (N, K) scores -> (N, K) calibrated scores.

    scores: s(o_k | p_i) of N prompts; content_free: (M, K) the same options' scores for M prompts whose text
    is content-free (``CONTENT_FREE_TEXTS``). With p_i = softmax_k s(o_k | p_i) and p̄ the mean over the M
    content-free prompts of their softmax, the calibrated prediction is argmax_k W p_i, W = diag(p̄)⁻¹: an option
    the model favours whatever the text says is divided by that favour. Returned as log W p_i = log p_i − log p̄
    (same argmax; not normalised).
    """
    if scores.dim() != 2 or content_free.dim() != 2 or content_free.shape[1] != scores.shape[1] or len(content_free) == 0:
        raise ValueError(f"scores must be (N, K) and content_free (M, K) with M >= 1, got {tuple(scores.shape)} and "
                         f"{tuple(content_free.shape)}")
    prior = content_free.float().softmax(1).mean(0)
    return scores.float().log_softmax(1) - prior.log()


class InstructionModel(nn.Module):
    """A causal LM in the course's multi-task interface: ``model(inputs, task) -> logits`` for ``training.train``.

    inputs: (B, 2, L) long, token ids and attention mask of right-padded sequences (``InstructionBatch.inputs``);
    the targets that go with them are ``InstructionBatch.labels`` and the loss ``answer_loss`` for every task.
    The columns past the batch's longest sequence are dropped before the forward pass, so the logits are
    (B, L', V) with L' ≤ L. Every task shares the LM and its LoRA layers, if any: the instruction names the
    task. A mixed batch (a list of task names) returns {task: TaskOutput(logits of its rows, positions)}.
    """

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, inputs: torch.Tensor, task: str | Sequence[str] | None = None):
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 3 or inputs.shape[1] != 2:
            got = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
            raise ValueError(f"inputs must be (B, 2, L): token ids and attention mask (InstructionBatch.inputs), got {got}")
        ids, mask = inputs[:, 0], inputs[:, 1]
        length = int(mask.sum(1).max())
        logits = self.lm(input_ids=ids[:, :length], attention_mask=mask[:, :length]).logits
        if task is None or isinstance(task, str):
            return logits
        if len(task) != len(inputs):
            raise ValueError(f"a mixed batch needs one task name per example: {len(task)} names for {len(inputs)} examples")
        outputs = {}
        for name in dict.fromkeys(task):
            positions = torch.tensor([i for i, t in enumerate(task) if t == name], dtype=torch.long)
            outputs[name] = TaskOutput(logits[positions.to(logits.device)], positions)
        return outputs
