"""Chapter 08's study: how LoRA's rank and its target modules set score and cost, at one epoch of the
WordNet tasks, and one LoRA per task against one shared by the tasks.

The runs are chapters 07 and 10's kind (``text_runs``): all training glosses at full length, one epoch
of mixed batches, complete test sets, the customary step sizes (heads 1e-2, LoRA 1e-3), α = 2r. The
rank sweep r = 1 … 64 puts LoRA on W_Q and W_V (``QUERY_VALUE``); one more run puts rank 8 on every
linear layer of every block (``ALL_LINEAR``). Frozen features, LoRA r = 4, 8, 16 and the shared LoRA are
the same configs as chapter 10's and are borrowed from its results file (chapter 10's r = 8 runs also
test merges, so its config says so here too). Each run records its median step time and peak step
memory, which the chapter predicts from r and the targets before reading them.

Seeds: 5, from the pilot and rule of chapter 07 (``adapter_tuning.DEFAULT_SEEDS``).
"""

from __future__ import annotations

from mtl_tutorial.evidence import Comparison
from mtl_tutorial.showdown import ALL_LINEAR, FROZEN
from mtl_tutorial.studies.adapter_tuning import DEFAULT_SEEDS
from mtl_tutorial.studies.peft_showdown import MERGED
from mtl_tutorial.studies.peft_showdown import run as showdown_run
from mtl_tutorial.studies.runner import Study
from mtl_tutorial.studies.text_runs import FAST_SIZE, estimate_text_seconds, text_config

RANKS = (1, 2, 4, 8, 16, 32, 64)
ALL_LAYERS = "LoRA r=8, all linear layers"
PRIMARY = (
    Comparison("LoRA r=8", FROZEN),            # does LoRA beat heads on frozen features at one epoch?
    Comparison("LoRA r=32", "LoRA r=4"),       # does 8x the rank buy accuracy?
    Comparison(ALL_LAYERS, "LoRA r=8"),        # does LoRA on every linear layer beat W_Q and W_V alone?
)


def grid(seeds, fast: bool = False) -> list[dict]:
    """Per seed: the new runs first (r = 1, 2, 32, 64, all layers), then those chapter 10 has."""
    size = FAST_SIZE if fast else {}
    ranks = (4, 8, 32) if fast else RANKS   # fast: the ranks of the primary comparisons
    configs = []
    for seed in seeds:
        configs += [text_config(f"LoRA r={r}", f"LoRA r={r}", seed, **size) for r in ranks if r not in (4, 8, 16)]
        configs.append(text_config(ALL_LAYERS, "LoRA r=8", seed, lora_targets=list(ALL_LINEAR), **size))
        configs += [text_config(f"LoRA r={r}", f"LoRA r={r}", seed, **size, **({"merges": True} if f"LoRA r={r}" == MERGED else {}))
                    for r in ranks if r in (4, 8, 16)]
        configs += [text_config(method, method, seed, **size) for method in (FROZEN, "shared LoRA r=8")]
    return configs


STUDY = Study(
    chapter="08",
    slug="lora",
    question="LoRA's rank r and target modules: score, step time and memory; per-task vs shared LoRA",
    grid=grid,
    run=showdown_run,
    estimate_seconds=estimate_text_seconds,
    primary=PRIMARY,
    default_seeds=DEFAULT_SEEDS,
    borrow_from=("10_peft_showdown",),
)
