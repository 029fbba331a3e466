"""Chapter 12's study: one decoder, SmolLM2-135M-Instruct, instruction-tuned on the four shipped tasks at once.

The question: does one LoRA tuned on all four tasks' instructions together answer each task as well as a
LoRA tuned on that task alone, on the same examples for the same number of steps? And what does the
common slip of training on the prompt's tokens too cost? Arms, per seed (``ARMS``):

- ``zero-shot``: the model as shipped (the seed changes nothing; the run is repeated per seed so that every
  comparison is paired by seed), with and without contextual calibration (``instruction.calibrated_scores``:
  a pilot found it answering nearly one option per task);
- ``multi-task LoRA``: one LoRA (r = 8, α = 16 on W_Q and W_V of all 30 blocks, as chapter 08) trained on
  single-task batches of all four tasks, each task's batches in proportion to its size, one epoch: every
  training example once;
- ``single-task LoRAs``: four LoRAs, one per task, each trained on its task's batches only, one epoch of
  them: the same examples and the same number of steps per task as the multi-task run;
- ``multi-task LoRA, prompt in the loss``: the multi-task run with the prompt's tokens as targets too
  (``instruction.collate_answers(prompt_loss=True)``).

Every arm answers every test example of its tasks by option scoring (``instruction.option_scores``); the
metrics are the test accuracies (``scores``), beside the training majority class (``majority``). The
recipe is declared, not tuned: Adam at 2e-4, batches of 16, reviews cut to their first 128 words, bf16
autocast (fp32 in fast mode); there is no validation split because nothing is chosen on data.

Primary comparisons (declared before any run): multi-task − single-task LoRAs and answers-only −
prompt-in-the-loss, both on the mean accuracy over the four tasks. Seeds: 5 by default, to be checked with
``evidence.seeds_for_power`` on the first 3 (the pilot) before more are run. This is GPU work: a step of
16 reviews takes about 10 s on one CPU thread (``estimate_seconds``).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time

import torch

from mtl_tutorial.backbone import DECODER_FILE, load_decoder
from mtl_tutorial.data import MultiTaskDataset, multitask_loader
from mtl_tutorial.data.instructions import ANSWERS, INSTRUCTIONS, instruction_answers, instruction_prompts, option_answers
from mtl_tutorial.evidence import Comparison
from mtl_tutorial.instruction import (CONTENT_FREE_TEXTS, InstructionModel, answer_ids, answer_loss, calibrated_scores,
                                      chat_prompt_ids, collate_answers, option_scores)
from mtl_tutorial.lora import apply_lora
from mtl_tutorial.runtime import seed_everything
from mtl_tutorial.studies.runner import Study
from mtl_tutorial.studies.text_runs import task_data
from mtl_tutorial.training import majority_class_accuracy, train

TASKS = ("sentiment", "condition", "supersense", "pos")
ZERO_SHOT, MULTI_TASK, SINGLE_TASK, PROMPT_LOSS = (
    "zero-shot", "multi-task LoRA", "single-task LoRAs", "multi-task LoRA, prompt in the loss")
ARMS = {ZERO_SHOT: "zero-shot", MULTI_TASK: "multi-task", SINGLE_TASK: "single-task", PROMPT_LOSS: "multi-task"}
PRIMARY = (
    Comparison(MULTI_TASK, SINGLE_TASK),   # does one LoRA for four tasks answer as well as one LoRA per task?
    Comparison(MULTI_TASK, PROMPT_LOSS),   # what does training on the prompt's tokens too cost?
)
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
MAX_WORDS = 128   # a review's first words (90 % of the reviews have fewer than 140)
FAST_SIZE = {"train_examples": 8, "test_examples": 6, "batch_size": 4, "max_words": 24, "precision": "fp32"}


def config(label: str, seed: int, *, tasks=TASKS, epochs: float = 1.0, batch_size: int = 16, lr: float = 2e-4,
           r: int = 8, alpha: float = 16, targets=("q_proj", "v_proj"), max_words: int = MAX_WORDS,
           train_examples: int | None = None, test_examples: int | None = None, precision: str = "bf16") -> dict:
    """A run of arm ``label`` as a JSON-able config (train_examples, test_examples: per source, None = all)."""
    if label not in ARMS:
        raise ValueError(f"unknown arm {label!r}; arms are: {', '.join(ARMS)}")
    return {"label": label, "arm": ARMS[label], "prompt_loss": label == PROMPT_LOSS, "seed": seed, "tasks": list(tasks),
            "epochs": epochs, "batch_size": batch_size, "lr": lr, "r": r, "alpha": alpha, "targets": list(targets),
            "max_words": max_words, "train_examples": train_examples, "test_examples": test_examples,
            "precision": precision, "decoder": DECODER_FILE}


def grid(seeds, fast: bool = False) -> list[dict]:
    """Every arm per seed, seeds outermost; fast: 8 training and 6 test texts per source, short texts."""
    return [config(label, seed, **(FAST_SIZE if fast else {})) for seed in seeds for label in ARMS]


@functools.lru_cache(maxsize=1)
def _decoder():
    return load_decoder()


def _autocast(precision: str, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def _training_data(task, tokenizer, max_words: int, prompt_loss: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs (N, 2, L), labels (N, L)) of one task's examples, padded to its longest."""
    prompts = [chat_prompt_ids(tokenizer, prompt) for prompt in instruction_prompts(task, max_words)]
    answers = [answer_ids(tokenizer, answer) for answer in instruction_answers(task)]
    batch = collate_answers(prompts, answers, tokenizer.pad_token_id, prompt_loss=prompt_loss)
    return batch.inputs, batch.labels


def _tune(lm, tokenizer, train_tasks, tasks, cfg: dict, device: torch.device):
    """A fresh LoRA on a copy of ``lm``, trained one epoch on ``tasks``; returns (model, History, seconds per step)."""
    seed_everything(cfg["seed"])
    model = InstructionModel(apply_lora(copy.deepcopy(lm), cfg["targets"], r=cfg["r"], alpha=cfg["alpha"]))
    data = MultiTaskDataset({t: _training_data(train_tasks[t], tokenizer, cfg["max_words"], cfg["prompt_loss"]) for t in tasks})
    loader = multitask_loader(data, cfg["batch_size"], strategy="proportional", seed=cfg["seed"])
    steps = max(1, round(cfg["epochs"] * len(loader)))
    start = time.perf_counter()
    history = train(model, loader, {t: answer_loss for t in tasks}, num_steps=steps, lr=cfg["lr"], device=device,
                    precision=cfg["precision"], desc=f"{cfg['label']}: {', '.join(tasks)}")
    return model, history, (time.perf_counter() - start) / steps


def _scores(lm, tokenizer, prompts: list[str], task, cfg: dict, device: torch.device) -> torch.Tensor:
    """(N, K) option scores of ``lm`` for ``prompts``, the options being ``task``'s answers."""
    ids = [chat_prompt_ids(tokenizer, prompt) for prompt in prompts]
    options = [answer_ids(tokenizer, answer) for answer in option_answers(task)]
    with _autocast(cfg["precision"], device):
        return option_scores(lm.to(device), ids, options, tokenizer.pad_token_id, batch_size=64 if device.type == "cuda" else 16)


def _correct(scores: torch.Tensor, task) -> int:
    return int((scores.argmax(1) == task.labels).sum())


def run(cfg: dict, device: torch.device | None = None, keep_model: bool = False) -> tuple[dict, object]:
    """One arm: train (unless zero-shot), answer the test sets; metrics for the results line."""
    device = torch.device(device or "cpu")
    lm, tokenizer = _decoder()
    train_tasks, test_tasks = task_data(cfg)   # the same (train, test) loading as chapters 07-10's runs
    tasks = cfg["tasks"]
    scores, correct, losses, step_seconds, models, calibrated = {}, {}, {}, {}, {}, {}
    if cfg["arm"] == "zero-shot":
        for t in tasks:
            task = test_tasks[t]
            answers = _scores(lm, tokenizer, instruction_prompts(task, cfg["max_words"]), task, cfg, device)
            content_free = _scores(lm, tokenizer, [INSTRUCTIONS[t].format(text=text) for text in CONTENT_FREE_TEXTS], task, cfg, device)
            correct[t], calibrated[t] = _correct(answers, task), _correct(calibrated_scores(answers, content_free), task)
            scores[t] = correct[t] / len(task)
    else:
        groups = [tasks] if cfg["arm"] == "multi-task" else [[t] for t in tasks]
        for group in groups:
            model, history, seconds = _tune(lm, tokenizer, train_tasks, group, cfg, device)
            for t in group:
                task = test_tasks[t]
                correct[t] = _correct(_scores(model.lm, tokenizer, instruction_prompts(task, cfg["max_words"]), task, cfg, device), task)
                scores[t] = correct[t] / len(task)
                losses[t] = [None if math.isnan(v) else round(v, 4) for v in history.losses[t]]
                step_seconds[t] = seconds
            models[", ".join(group)] = model if keep_model else None
    steps = max((len(values) for values in losses.values()), default=0)   # single-task runs end at different steps
    metrics = {
        "scores": scores, "correct": correct,
        "test_examples": {t: len(test_tasks[t]) for t in tasks},
        "majority": {t: majority_class_accuracy(train_tasks[t].labels, test_tasks[t].labels) for t in tasks},
        "step_seconds": step_seconds,
        **({"calibrated_scores": {t: calibrated[t] / len(test_tasks[t]) for t in tasks}, "calibrated_correct": calibrated}
           if calibrated else {}),
        "history": {"steps": list(range(1, steps + 1)),
                    "losses": {t: values + [None] * (steps - len(values)) for t, values in losses.items()}},
    }
    return metrics, (models if keep_model else None)


# seconds on one CPU thread of the 2-core Xeon, from a zero-shot pilot on 100 training texts per source (``seconds``
# per scored (text, option) pair: prompts of ~185 tokens for a review, ~70-100 for a gloss); a training step's text
# costs about three such passes (forward and backward)
PAIR_SECONDS = {"sentiment": 0.56, "condition": 0.56, "supersense": 0.3, "pos": 0.2}
TEST_PAIRS = {"sentiment": 372 * 3, "condition": 372 * 5, "supersense": 550 * 11, "pos": 550 * 4}
TRAIN_TEXTS = {"sentiment": 592, "condition": 592, "supersense": 2200, "pos": 2200}


def estimate_seconds(cfg: dict) -> float:
    """A run's time on one CPU thread (loading the decoder, ~40 s once per process, not counted): its training
    texts at 3 passes each and its scored (test text, option) pairs at one pass, ``PAIR_SECONDS`` a pass."""
    total = 0.0
    for t in cfg["tasks"]:
        test_pairs = TEST_PAIRS[t] if cfg["test_examples"] is None else min(cfg["test_examples"], TEST_PAIRS[t]) * len(ANSWERS[t])
        train_texts = 0 if cfg["arm"] == "zero-shot" else cfg["epochs"] * min(TRAIN_TEXTS[t], cfg["train_examples"] or TRAIN_TEXTS[t])
        total += PAIR_SECONDS[t] * (test_pairs + 3 * train_texts)
    if cfg["max_words"] < MAX_WORDS:   # fast mode's short texts
        total *= 0.5
    return total


STUDY = Study(
    chapter="12",
    slug="instruction_tuning",
    question="one LoRA instruction-tuned on four tasks vs one per task, and the cost of the prompt in the loss",
    grid=grid,
    run=run,
    estimate_seconds=estimate_seconds,
    primary=PRIMARY,
    default_seeds=DEFAULT_SEEDS,
)
