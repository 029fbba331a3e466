"""Chapter 07's study: adapters against heads on frozen features, full fine-tuning and the article's
adapters after the encoder, and the bottleneck sweep, at one epoch of the WordNet tasks.

Every run trains on all 2 × 2,200 training glosses (full length) for one epoch of mixed batches of 16
(275 steps) and is scored on all 2 × 550 test glosses; seeds pair the runs (heads, adapters, batch
order). The step sizes are the course's customary ones (heads 1e-2; adapters 1e-3; full fine-tuning
5e-5), untuned for every method alike.

Seeds: a pilot (2026-12-06: seeds 0-2, one epoch, texts cut to 32 tokens) measured paired differences
with a standard deviation of at most ``PILOT_DIFFERENCE_SD`` = 0.89 points (Pfeiffer adapters − frozen
features); ``evidence.seeds_for_power(0.89, 2.0)`` needs fewer than the course's minimum of 5, so the
study runs 5 (``DEFAULT_SEEDS``), enough to detect 2 points with at least 80 % power.
"""

from __future__ import annotations

from mtl_tutorial.evidence import Comparison, seeds_for_power
from mtl_tutorial.showdown import ARTICLE_ADAPTERS, BOTTLENECK_SIZE, FROZEN
from mtl_tutorial.studies.runner import Study
from mtl_tutorial.studies.text_runs import FAST_SIZE, estimate_text_seconds, run_text_config, text_config

PILOT_DIFFERENCE_SD = 0.89  # points: the largest sd of paired differences in the pilot
SMALLEST_DIFFERENCE = 2.0  # points of accuracy each primary comparison must resolve
DEFAULT_SEEDS = tuple(range(seeds_for_power(PILOT_DIFFERENCE_SD, SMALLEST_DIFFERENCE, minimum=5)))
ADAPTERS = "Pfeiffer adapters"   # the chapter's adapter in the primary comparisons (one adapter per layer,
                                 # as many as the article's stack: the pitfall compares like with like)
METHODS = (FROZEN, "Houlsby adapters", ADAPTERS, "full fine-tuning", ARTICLE_ADAPTERS)
SWEEP_SIZES = (4, 16, BOTTLENECK_SIZE, 256)  # the bottleneck m of Pfeiffer adapters
PRIMARY = (
    Comparison(ADAPTERS, FROZEN),               # do adapters buy anything over heads on frozen features?
    Comparison("full fine-tuning", ADAPTERS),   # what do they give up against training every weight?
    Comparison(ADAPTERS, ARTICLE_ADAPTERS),     # the article's placement against the right one
)


def sweep_label(size: int) -> str:
    return ADAPTERS if size == BOTTLENECK_SIZE else f"{ADAPTERS}, m = {size}"


def grid(seeds, fast: bool = False) -> list[dict]:
    """Seeds outermost (an interrupted study has whole seeds); fast: 24 training and 16 test glosses per
    task, texts cut to 32 tokens, one seed, two sweep sizes (a smoke run of the same code)."""
    size = FAST_SIZE if fast else {}
    sizes = (4, BOTTLENECK_SIZE) if fast else SWEEP_SIZES
    configs = []
    for seed in seeds:
        configs += [text_config(method, method, seed, **size) for method in METHODS]
        configs += [text_config(sweep_label(m), ADAPTERS, seed, bottleneck_size=m, **size)
                    for m in sizes if m != BOTTLENECK_SIZE]
    return configs


STUDY = Study(
    chapter="07",
    slug="adapter_tuning",
    question="adapters vs frozen features, full fine-tuning and the article's placement; the bottleneck m",
    grid=grid,
    run=run_text_config,
    estimate_seconds=estimate_text_seconds,
    primary=PRIMARY,
    default_seeds=DEFAULT_SEEDS,
)

# The worked solutions' runs (exercises 1, 3 and 4): Houlsby adapters changed in one way each, with the
# same seeds, batches and epoch as the study; their reference runs (Houlsby m = 64 with GELU in every
# layer, Pfeiffer m = 64) are the study's own.
EXERCISE_RUNS = {
    "Houlsby adapters, top 3 layers": {"adapter_layers": [3, 4, 5]},   # exercise 1: where do adapters help most?
    "Houlsby adapters, relu": {"activation": "relu"},                   # exercise 3: does σ matter at m = 64?
    "Houlsby adapters, tanh": {"activation": "tanh"},
    "Houlsby adapters, m = 32": {"bottleneck_size": 32},                # exercise 4: Pfeiffer m = 64's parameter count
}


def exercise_grid(seeds, fast: bool = False) -> list[dict]:
    """The exercises' runs per seed (fast: the small sizes of ``grid``)."""
    size = FAST_SIZE if fast else {}
    return [text_config(label, "Houlsby adapters", seed, **size, **settings)
            for seed in seeds for label, settings in EXERCISE_RUNS.items()]


EXERCISES = Study(
    chapter="07",
    slug="adapter_tuning_exercises",
    question="the worked solutions' adapter variants: top 3 layers, ReLU and tanh, Houlsby at m = 32",
    grid=exercise_grid,
    run=run_text_config,
    estimate_seconds=estimate_text_seconds,
    primary=(),
    default_seeds=DEFAULT_SEEDS,
)
