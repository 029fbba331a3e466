"""The PEFT showdown (chapter 10): every way of adapting one frozen backbone to several tasks,
trained by the same loop on the same batches and measured the same way.

Each method gets the same heads (one linear head per task, initialised by the seed), the same
mixed-task batches (``multitask_loader`` with the seed) and the same number of steps; the heads
train at ``HEAD_LR``, what the method adds inside the backbone at its customary step size
(``BODY_LR``: the values chapters 07-09 use). One run gives one ``ShowdownRow``:

- the test metric of every task, and their mean;
- trainable parameters (all tasks together) and their share of the backbone's;
- ``task_file_bytes``: the file one task needs on top of the pretrained backbone (its PEFT tensors
  and head; for full fine-tuning the whole fine-tuned backbone, the price of not sharing it);
- the median seconds of a training step (``bench.StepClock``) and the peak memory of one
  (``bench.training_step_memory``: CUDA's allocator peak, or the torch profiler's on the CPU).

Full fine-tuning, shared LoRA and prompt tuning share what they train across the tasks (one
backbone, one LoRA, one prompt); adapters, LoRA and prefixes keep one set per task
(``MultiTaskPEFTModel``).
"""

from __future__ import annotations

import contextlib
import copy
import math
import re
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mtl_tutorial.adapter import AdaptersAfterEncoder, MultiTaskAdapterModel
from mtl_tutorial.backbone import count_parameters
from mtl_tutorial.bench import StepClock, training_step_memory
from mtl_tutorial.checks import check_count, is_real_number
from mtl_tutorial.data import MultiTaskBatch, MultiTaskDataset, multitask_loader
from mtl_tutorial.evidence import mean_interval
from mtl_tutorial.features import frozen_features
from mtl_tutorial.lora import MultiTaskLoRAModel, apply_lora
from mtl_tutorial.models import HardSharingModel, TextEncoderTrunk
from mtl_tutorial.multitask_peft import MultiTaskPEFTModel
from mtl_tutorial.prefix import MultiTaskPrefixModel, PrefixStepRecorder, PromptTunedEncoder, prefix_from_text
from mtl_tutorial.runtime import check_device, seed_everything
from mtl_tutorial.training import History, accuracy, evaluate, train

FROZEN = "frozen features"
ARTICLE_ADAPTERS = "adapters after the encoder (article)"  # chapter 07's pitfall, not a contender
METHODS = (FROZEN, "full fine-tuning", "Houlsby adapters", "Pfeiffer adapters", "LoRA r=4", "LoRA r=8",
           "LoRA r=16", "shared LoRA r=8", "prefix-tuning", "prompt tuning")
PEFT_FROZEN_MODULES = "train"  # train()'s option for every run here: peft's recipe, dropout on in the frozen backbone
HEAD_LR = 1e-2
BODY_LR = {"full fine-tuning": 5e-5, "Houlsby adapters": 1e-3, "Pfeiffer adapters": 1e-3, "LoRA r=4": 1e-3,
           "LoRA r=8": 1e-3, "LoRA r=16": 1e-3, "shared LoRA r=8": 1e-3, "prefix-tuning": 1e-2, "prompt tuning": 1e-2,
           ARTICLE_ADAPTERS: 1e-3}
BOTTLENECK_SIZE = 64  # the adapters' m (chapter 07)
NUM_VIRTUAL_TOKENS = 10  # P of prefix- and prompt tuning (chapter 09)


QUERY_VALUE = ("query", "value")  # where LoRA goes by default (Hu et al. 2021, §7.1)
ALL_LINEAR = ("query", "key", "value", "output.dense", "intermediate.dense")  # every linear layer of every block
LORA_RANK = re.compile(r"^LoRA r=([1-9][0-9]*)$")  # per-task LoRA of any rank: "LoRA r=32"


def _check_method(method: str) -> None:
    if method not in (*METHODS, ARTICLE_ADAPTERS) and not LORA_RANK.match(method):
        raise ValueError(f"unknown method {method!r}; the showdown's methods are: {', '.join(METHODS)} "
                         f"(and chapter 07's {ARTICLE_ADAPTERS!r}; 'LoRA r=N' takes any rank N >= 1)")


def body_lr_of(method: str) -> float | None:
    """Adam's customary step size for what ``method`` trains inside the backbone (None: it trains
    nothing there, ``FROZEN``); per-task LoRA of any rank takes LoRA's."""
    _check_method(method)
    if LORA_RANK.match(method):
        return BODY_LR["LoRA r=8"]
    return BODY_LR.get(method)


def build_model(method: str, backbone: nn.Module, tokenizer, heads: Mapping[str, nn.Module], max_length: int,
                bottleneck_size: int = BOTTLENECK_SIZE, activation: str = "gelu",
                adapter_layers: Sequence[int] | None = None, lora_targets: Sequence[str] = QUERY_VALUE,
                projection_hidden: int | None = None, prefix_layers: Sequence[int] | None = None,
                prefix_words: Mapping[str, str] | None = None, position_offset: int = 0,
                num_virtual_tokens: int = NUM_VIRTUAL_TOKENS) -> nn.Module:
    """The model ``method`` trains, on a copy of ``backbone`` (left unchanged) with copies of ``heads``.

    ``FROZEN`` is the heads alone: they read features the frozen backbone computed once.
    ``ARTICLE_ADAPTERS``: the article's adapter stack after the frozen encoder, shared by the tasks.
    bottleneck_size, activation, adapter_layers: the adapters' m, σ and the transformer layers that
    get them (None: all), for the per-task adapter methods. lora_targets: the module-name patterns
    LoRA wraps (``QUERY_VALUE``, or e.g. ``ALL_LINEAR``), for the LoRA methods. Prefix-tuning only:
    projection_hidden, the width M of the MLP that reparameterises the prefixes (None: direct);
    prefix_layers, the layers that get prefixes (None: all); prefix_words, task -> a text whose
    keys and values start that task's prefix (``prefix.prefix_from_text``; None: N(0, 1));
    position_offset, the first position of the real tokens (P: peft's numbering; 0: BERT's own).
    num_virtual_tokens: P of prefix- and prompt tuning.
    """
    _check_method(method)
    check_count("num_virtual_tokens", num_virtual_tokens)
    if num_virtual_tokens != NUM_VIRTUAL_TOKENS and method not in ("prefix-tuning", "prompt tuning"):
        raise ValueError(f"num_virtual_tokens is P of prefix- and prompt tuning; {method!r} has no virtual tokens")
    prefix_options = {"projection_hidden": projection_hidden, "prefix_layers": prefix_layers, "prefix_words": prefix_words,
                      "position_offset": position_offset or None}
    given = [name for name, value in prefix_options.items() if value is not None]
    if given and method != "prefix-tuning":
        raise ValueError(f"{', '.join(given)} change prefix-tuning's prefixes; {method!r} has none (leave them out)")
    heads = copy.deepcopy(dict(heads))
    if method == FROZEN:
        return HardSharingModel(nn.Identity(), heads)
    encoder = copy.deepcopy(backbone)
    if method == "full fine-tuning":
        return HardSharingModel(TextEncoderTrunk(encoder.requires_grad_(True), tokenizer, max_length), heads)
    if method == ARTICLE_ADAPTERS:
        return HardSharingModel(TextEncoderTrunk(AdaptersAfterEncoder(encoder, bottleneck_size), tokenizer, max_length), heads)
    if method == "prompt tuning":
        return HardSharingModel(TextEncoderTrunk(PromptTunedEncoder(encoder, num_virtual_tokens), tokenizer, max_length), heads)
    if method == "shared LoRA r=8":
        return HardSharingModel(TextEncoderTrunk(apply_lora(encoder, tuple(lora_targets), r=8, alpha=16), tokenizer, max_length), heads)
    trunk = TextEncoderTrunk(encoder.requires_grad_(False), tokenizer, max_length, position_offset)
    if method.endswith("adapters"):
        return MultiTaskAdapterModel(trunk, heads, bottleneck_size, placement=method.split()[0].lower(),
                                     activation=activation, layers=adapter_layers)
    if method.startswith("LoRA"):
        r = int(method.split("=")[1])
        return MultiTaskLoRAModel(trunk, heads, tuple(lora_targets), r=r, alpha=2 * r)
    model = MultiTaskPrefixModel(trunk, heads, num_virtual_tokens, projection_hidden, prefix_layers)
    if prefix_words is not None:
        if projection_hidden is not None or set(prefix_words) != set(heads):
            raise ValueError(f"prefix_words needs direct prefixes and one text per task ({', '.join(heads)}), "
                             f"got texts for {', '.join(prefix_words)}")
        with torch.no_grad():
            for task, text in prefix_words.items():
                model.trunk.prefix_encoder.encoders[task].prefix.copy_(
                    prefix_from_text(backbone, tokenizer, text, num_virtual_tokens, prefix_layers))
    return model


def task_tensors(model: nn.Module, task: str) -> dict[str, torch.Tensor]:
    """What serving ``task`` needs on top of the pretrained backbone: a ``MultiTaskPEFTModel``'s
    ``task_state_dict``; otherwise every trained tensor of the trunk (shared by the tasks) and the
    task's head."""
    if isinstance(model, MultiTaskPEFTModel):
        return model.task_state_dict(task)
    model._check_task(task)
    trained = {f"trunk.{name}": p for name, p in model.trunk.named_parameters() if p.requires_grad}
    return trained | {f"head.{name}": t for name, t in model.heads[task].state_dict(keep_vars=True).items()}


def task_file_bytes(model: nn.Module, task: str) -> int:
    """Bytes of the safetensors file holding ``task_tensors(model, task)`` (``save_task``'s file for a
    multi-task PEFT model), written to a temporary folder and measured."""
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{task}.safetensors"
        if isinstance(model, MultiTaskPEFTModel):
            model.save_task(task, path)
        else:
            save_file({k: t.detach().cpu().contiguous() for k, t in task_tensors(model, task).items()}, str(path))
        return path.stat().st_size


@dataclass
class ShowdownRow:
    """One (method, seed) run: ``scores[task]`` is the test metric; the rest is its cost."""

    method: str
    seed: int
    scores: dict[str, float]
    trainable_parameters: int
    backbone_parameters: int
    task_file_bytes: dict[str, int]
    step_seconds: float
    peak_memory_bytes: int
    memory_measure: str
    history: History | None = field(default=None, repr=False, compare=False)
    """The training run's ``History`` (per-step, per-task losses), for loss curves."""
    model: nn.Module | None = field(default=None, repr=False, compare=False)
    """The trained model, kept when ``showdown(..., keep_models=...)`` names its method."""
    prefix_steps: dict | None = field(default=None, repr=False, compare=False)
    """Prefix-tuning only: how far each task's prefix moved per step (``PrefixStepRecorder.summary``)."""

    @property
    def mean_score(self) -> float:
        return statistics.mean(self.scores.values())

    @property
    def trainable_share(self) -> float:
        """Trainable parameters as a fraction of the backbone's."""
        return self.trainable_parameters / self.backbone_parameters


def _frozen_features(backbone: nn.Module, tokenizer, train_tasks: Mapping[str, object], test_tasks: Mapping[str, object],
                     max_length: int) -> dict[str, dict[str, torch.Tensor]]:
    """{"train"|"test": {task: (N, H) features of the frozen backbone}} (from the feature cache when possible)."""
    return {split: {task: frozen_features(data[task].texts, backbone, tokenizer, max_length=max_length, progress=False)
                    for task in data}
            for split, data in (("train", train_tasks), ("test", test_tasks))}


def first_training_batch(train_data: MultiTaskDataset, batch_size: int, seed: int) -> MultiTaskBatch:
    """The first mixed batch a run with ``seed`` trains on: the batch ``run_method`` measures a step's peak
    memory on (``training_step_memory``)."""
    return next(iter(multitask_loader(train_data, batch_size, mixed=True, seed=seed)))


def run_method(
    method: str,
    seed: int,
    backbone: nn.Module,
    tokenizer,
    train_tasks: Mapping[str, object],
    test_tasks: Mapping[str, object],
    num_steps: int,
    batch_size: int = 16,
    max_length: int = 32,
    features: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    keep_model: bool = False,
    bottleneck_size: int = BOTTLENECK_SIZE,
    device: torch.device | str | None = None,
    head_lr: float = HEAD_LR,
    body_lr: float | None = None,
    activation: str = "gelu",
    adapter_layers: Sequence[int] | None = None,
    lora_targets: Sequence[str] = QUERY_VALUE,
    projection_hidden: int | None = None,
    prefix_layers: Sequence[int] | None = None,
    prefix_words: Mapping[str, str] | None = None,
    position_offset: int = 0,
    num_virtual_tokens: int = NUM_VIRTUAL_TOKENS,
) -> ShowdownRow:
    """Train ``method`` on the tasks for ``num_steps`` mixed batches with seed ``seed``, test it.

    train_tasks, test_tasks: task -> an object with ``texts``, ``labels`` and ``num_classes`` (e.g.
    ``load_text_tasks``). features: {"train"|"test": {task: (N, H)}} of the frozen backbone, used by
    ``FROZEN`` (computed here when None). The metric is accuracy. keep_model: the row holds the
    trained model (``row.model``). bottleneck_size, activation, adapter_layers: the adapters' m, σ
    and layers; lora_targets: where LoRA goes (``build_model``). device: where the model trains
    (default: the CPU); the frozen features are computed on the CPU and cached. head_lr, body_lr:
    Adam's step sizes of the heads and of what the method trains inside the backbone (default
    ``HEAD_LR`` and ``BODY_LR[method]``). projection_hidden, prefix_layers, prefix_words,
    position_offset: prefix-tuning's variants, num_virtual_tokens: P of prefix- and prompt tuning (``build_model``). Prefix-tuning runs also record how far
    each task's prefix moved per step (``row.prefix_steps``).
    """
    _check_method(method)
    check_count("num_steps", num_steps)
    check_count("max_length", max_length, minimum=2)   # [CLS] and [SEP] take two tokens
    for name, lr in (("head_lr", head_lr), ("body_lr", body_lr)):
        if lr is not None and not (is_real_number(lr) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"{name} must be a finite step size > 0, got {lr!r}")
    tasks = list(train_tasks)
    if set(test_tasks) != set(tasks):
        raise ValueError(f"train and test tasks differ: {sorted(tasks)} vs {sorted(test_tasks)}")
    if method == FROZEN and features is not None:
        missing = [f"{split}/{task}" for split in ("train", "test") for task in tasks if task not in features.get(split, {})]
        if missing:
            raise ValueError(f"features lack {', '.join(missing)}; pass {{'train': {{task: (N, H)}}, 'test': {{...}}}} "
                             f"for every task, or features=None to compute them")
    seed_everything(seed)
    heads = {task: nn.Linear(backbone.config.hidden_size, train_tasks[task].num_classes) for task in tasks}
    model = build_model(method, backbone, tokenizer, heads, max_length, bottleneck_size, activation, adapter_layers,
                        lora_targets, projection_hidden, prefix_layers, prefix_words, position_offset, num_virtual_tokens)
    if device is not None:
        model.to(check_device(device))
    if method == FROZEN:
        if features is None:
            features = _frozen_features(backbone, tokenizer, train_tasks, test_tasks, max_length)
        inputs = {split: {task: features[split][task] for task in tasks} for split in ("train", "test")}
    else:
        inputs = {split: {task: list(data[task].texts) for task in tasks}
                  for split, data in (("train", train_tasks), ("test", test_tasks))}
    train_data = MultiTaskDataset({task: (inputs["train"][task], train_tasks[task].labels) for task in tasks})
    test_data = {task: (inputs["test"][task], test_tasks[task].labels) for task in tasks}
    loss_fns = {task: F.cross_entropy for task in tasks}
    loader = multitask_loader(train_data, batch_size, mixed=True, seed=seed)
    first_batch = first_training_batch(train_data, batch_size, seed)
    first_batch = first_batch.to(next(model.parameters()).device)
    memory = training_step_memory(model, first_batch, loss_fns, frozen_modules=PEFT_FROZEN_MODULES)
    body = [p for p in model.trunk.parameters() if p.requires_grad]
    body_lr = body_lr_of(method) if body_lr is None else body_lr
    optimizer = torch.optim.Adam([{"params": model.heads.parameters(), "lr": head_lr}]
                                 + ([{"params": body, "lr": body_lr}] if body else []))
    recorder = PrefixStepRecorder(model.trunk.prefix_encoder, optimizer) if isinstance(model, MultiTaskPrefixModel) else None
    with StepClock(optimizer) as clock, recorder or contextlib.nullcontext():
        history = train(model, loader, loss_fns, num_steps, optimizer=optimizer, progress=False, device=device,
                        frozen_modules=PEFT_FROZEN_MODULES)
    results = evaluate(model, test_data, {"accuracy": accuracy})
    return ShowdownRow(
        method=method,
        seed=seed,
        scores={task: results[f"{task}/accuracy"] for task in tasks},
        trainable_parameters=count_parameters(model, trainable_only=True),
        backbone_parameters=count_parameters(backbone),
        task_file_bytes={task: task_file_bytes(model, task) for task in tasks},
        step_seconds=clock.median(),
        peak_memory_bytes=memory["bytes"],
        memory_measure=memory["measure"],
        history=history,
        model=model if keep_model else None,
        prefix_steps=recorder.summary() if recorder else None,
    )


def showdown(
    methods: Sequence[str],
    seeds: Sequence[int],
    backbone: nn.Module,
    tokenizer,
    train_tasks: Mapping[str, object],
    test_tasks: Mapping[str, object],
    num_steps: int,
    batch_size: int = 16,
    max_length: int = 32,
    progress: bool = True,
    keep_models: Sequence[str] = (),
) -> list[ShowdownRow]:
    """``run_method`` for every (method, seed), seeds outermost so that an interrupted run has whole
    seeds; frozen features are computed once. One progress bar over the runs. keep_models: the
    methods whose rows keep their trained models (for deployment and merging afterwards)."""
    if not methods or not seeds:
        raise ValueError(f"nothing to run: methods {list(methods)!r}, seeds {list(seeds)!r}; give at least one of each")
    for method in [*methods, *keep_models]:
        _check_method(method)
    features = None
    if FROZEN in methods:
        features = _frozen_features(backbone, tokenizer, train_tasks, test_tasks, max_length)
    runs = [(method, seed) for seed in seeds for method in methods]
    rows = []
    for method, seed in tqdm(runs, desc="showdown", unit="run", disable=not progress):
        rows.append(run_method(method, seed, backbone, tokenizer, train_tasks, test_tasks, num_steps, batch_size,
                               max_length, features, keep_model=method in keep_models))
    return rows


def showdown_table(rows: Sequence[ShowdownRow], majority: Mapping[str, float] | None = None,
                   with_scores: bool = True) -> str:
    """One line per method: each task's test accuracy and the mean (mean ± std over seeds, in %),
    trainable parameters (% of the backbone), MB of one task's file, ms per step, peak MB of a step
    (MB = 10⁶ bytes), and footnotes that say what the cost columns charge:

    - ``*`` (full fine-tuning, shared LoRA, prompt tuning, the article's adapters): one body shared by the tasks, and each task's file
      holds all of it (the shared weights are not split between the tasks);
    - ``†`` (``FROZEN``): ms/step and peak MB are the heads' alone; the backbone pass that computed
      the features once beforehand is not in them.

    majority: task -> accuracy of always predicting the most frequent training class (a first row).
    with_scores: False leaves the accuracy columns out (the costs alone, beside ``evidence.score_table``)."""
    if not rows:
        raise ValueError("rows is empty; pass the ShowdownRows that showdown or run_method returned")
    shared_methods = ("full fine-tuning", "shared LoRA r=8", "prompt tuning", ARTICLE_ADAPTERS)  # one body for all tasks
    methods = list(dict.fromkeys(row.method for row in rows))
    tasks = list(rows[0].scores)

    def cell(values: list[float]) -> str:
        if len(values) < 2:
            return f"{100 * values[0]:.1f}"
        interval = mean_interval(values)
        return f"{100 * interval.mean:.1f} ± {100 * interval.std:.1f}"

    score_columns = tasks + ["mean"] if with_scores else []
    width = max(20, *(len(method) + 1 for method in methods))
    header = f"{'method':<{width}}" + "".join(f"{column:>15}" for column in score_columns) + \
        f"{'trainable':>24}{'MB/task file':>14}{'ms/step':>9}{'peak MB':>10}"
    lines = [header]
    if majority is not None and with_scores:
        lines.append(f"{'majority class':<{width}}" + "".join(f"{100 * majority[task]:>15.1f}" for task in tasks)
                     + f"{100 * statistics.mean(majority[task] for task in tasks):>15.1f}")
    for method in methods:
        mine = [row for row in rows if row.method == method]
        first = mine[0]
        shared, frozen = ("*" if method in shared_methods else " "), ("†" if method == FROZEN else " ")
        scores = ("".join(f"{cell([row.scores[task] for row in mine]):>15}" for task in tasks)
                  + f"{cell([row.mean_score for row in mine]):>15}") if with_scores else ""
        lines.append(
            f"{method:<{width}}" + scores
            + f"{f'{first.trainable_parameters:,} ({100 * first.trainable_share:.2f} %)':>24}"
            + f"{statistics.mean(first.task_file_bytes.values()) / 1e6:>13.2f}{shared}"
            + f"{1000 * statistics.median(row.step_seconds for row in mine):>8.0f}{frozen}"
            + f"{first.peak_memory_bytes / 1e6:>9.1f}{frozen}"
        )
    seeds = sorted({row.seed for row in rows})
    count = f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}"
    what = f"test accuracy in %, mean ± std over {count}" if with_scores else f"{count} per method"
    lines.append(f"({what}; ms/step: median over seeds of each run's median step; peak MB: one training step, "
                 f"weights included, {rows[0].memory_measure}; MB = 10^6 bytes)")
    if any(method in shared_methods for method in methods):
        lines.append("* shared by the tasks: each task's file holds ALL the shared trained weights (for full fine-tuning "
                     "the whole backbone), not a per-task share; serving T tasks needs one copy of them and T heads")
    if FROZEN in methods:
        lines.append(f"† {FROZEN}: the heads' step alone; the backbone pass that computed the features (once, before "
                     f"training) is excluded, as are the backbone's weights from peak MB")
    return "\n".join(lines)
