"""Chapter 09's study: one prefix per task against heads on frozen features and prompt tuning, and
direct against reparameterised prefixes, at one epoch of the WordNet tasks.

The runs are chapter 10's kind (``text_runs``): all 2 × 2,200 training glosses at full length, one
epoch of mixed batches of 16 (275 steps), the complete test sets, heads at 1e-2, P = 10 virtual
tokens. Frozen features, prefix-tuning (direct prefixes, Adam at 1e-2) and prompt tuning are the
same configs as chapter 10's and are borrowed from its results file. New here: the prefixes
reparameterised by Li & Liang's MLP (M = ``PROJECTION_HIDDEN``) at the direct prefix's step size
1e-2 and at 1e-3, and the direct prefixes at 1e-3 (so both parameterisations run at both step sizes).
Every new prefix run records how far each task's prefix moved per step
(``prefix.PrefixStepRecorder``), the quantity the chapter's explanation of the reparameterised
runs rests on. Not run (for the compute budget): other step sizes, other prefix lengths P, SGD.

Seeds: chapter 10's study measured the paired prefix-tuning − frozen features differences with a
standard deviation of ``PILOT_DIFFERENCE_SD`` = 0.38 points, and ``seeds_for_power(0.38, 2.0)`` is
below the course's minimum of 5. The only pilot of the reparameterised prefix is the chapter's
earlier 40-step run (3 seeds), whose paired differences had a standard deviation of
``REPARAMETERISED_PILOT_SD`` = 3.8 points; 5 seeds detect a difference of ``REPARAMETERISED_DIFFERENCE``
= 10 points at that spread with at least 80 % power (the 40-step collapse was 62 points). So the
study runs 5 seeds (``DEFAULT_SEEDS``), the seeds of chapter 10's runs it borrows.
"""

from __future__ import annotations

from mtl_tutorial.evidence import Comparison, seeds_for_power
from mtl_tutorial.showdown import FROZEN
from mtl_tutorial.studies.runner import Study
from mtl_tutorial.studies.text_runs import FAST_SIZE, estimate_text_seconds, run_text_config, steps_for, text_config

PILOT_DIFFERENCE_SD = 0.38        # points: prefix-tuning − frozen features in chapter 10's study (5 seeds)
SMALLEST_DIFFERENCE = 2.0         # points the comparison with frozen features must resolve
REPARAMETERISED_PILOT_SD = 3.8    # points: reparameterised (lr 1e-3) − head only, the chapter's 40-step run
REPARAMETERISED_DIFFERENCE = 10.0  # points the parameterisation comparisons must resolve
DEFAULT_SEEDS = tuple(range(max(seeds_for_power(PILOT_DIFFERENCE_SD, SMALLEST_DIFFERENCE, minimum=5),
                                seeds_for_power(REPARAMETERISED_PILOT_SD, REPARAMETERISED_DIFFERENCE, minimum=5))))
PROJECTION_HIDDEN = 512           # M, the width of the reparameterising MLP (Li & Liang's default; peft's)
DIRECT = "prefix-tuning"          # direct prefixes at Adam 1e-2: chapter 10's run
STEP_SIZES = (1e-2, 1e-3)         # Adam's step size of the prefixes (the heads keep 1e-2)


def prefix_label(lr: float, reparameterised: bool) -> str:
    """The run's name: chapter 10's ``DIRECT`` for direct prefixes at its 1e-2."""
    if not reparameterised and lr == 1e-2:
        return DIRECT
    return f"{'reparameterised' if reparameterised else 'direct'} prefix, lr {lr:g}"


BORROWED = (FROZEN, DIRECT, "prompt tuning")
PRIMARY = (
    Comparison(DIRECT, FROZEN),                                 # does a prefix per task beat heads on frozen features?
    Comparison(prefix_label(1e-2, True), DIRECT),               # the MLP at the direct prefix's step size
    Comparison(prefix_label(1e-3, True), DIRECT),               # the MLP at a 10 times smaller step size
)


def grid(seeds, fast: bool = False) -> list[dict]:
    """Per seed (seeds outermost): the new runs first, then chapter 10's; fast: its small sizes."""
    size = FAST_SIZE if fast else {}
    configs = []
    for seed in seeds:
        configs += [text_config(prefix_label(lr, True), DIRECT, seed, body_lr=lr, projection_hidden=PROJECTION_HIDDEN,
                                **size) for lr in STEP_SIZES]
        configs.append(text_config(prefix_label(1e-3, False), DIRECT, seed, body_lr=1e-3, **size))
        configs += [text_config(method, method, seed, **size) for method in BORROWED]
    return configs


STUDY = Study(
    chapter="09",
    slug="prefix_tuning",
    question="per-task prefixes vs frozen features and prompt tuning; direct vs reparameterised prefixes by step size",
    grid=grid,
    run=run_text_config,
    estimate_seconds=estimate_text_seconds,
    primary=PRIMARY,
    default_seeds=DEFAULT_SEEDS,
    borrow_from=("10_peft_showdown",),
)

# The worked solutions' runs (exercises 2-4): the direct prefix of ``DIRECT`` changed in one way each (3, 4),
# and prompt tuning with as many trained numbers as a task's prefix (2), with the same seeds, batches and epoch
# as the study; their reference run is the study's ``DIRECT``. Exercise 1 asks about the first 30 steps:
# ``exercise_one_configs`` are those 30 steps, run live by the solutions. Not run, for the compute budget: a
# middle k for exercise 3.
DESCRIPTIONS = {   # exercise 1: the texts whose first P tokens' keys and values start each task's prefix
    "supersense": "the supersense, or lexicographer file, of a word from its dictionary gloss",
    "pos": "the part of speech, noun, verb, adjective or adverb, of a word from its dictionary gloss",
}
EXERCISE_RUNS = {
    "prefix-tuning, top layer": {"prefix_layers": [5]},                   # exercise 3: one prefixed layer of six
    "prefix-tuning, peft's positions": {"position_offset": 10},           # exercise 4: tokens at P … P + L − 1
}
REAL_WORDS = "prefix-tuning, real-word start"
EQUAL_BUDGET = "prompt tuning, P = 120"   # exercise 2: as many trained numbers as a task's prefix at P = 10 (120·H = 10·N·2H)


def exercise_one_configs(seeds, steps: int = 30, fast: bool = False) -> list[dict]:
    """Exercise 1's runs: the first ``steps`` steps of ``DIRECT`` from its random start and from the
    ``DESCRIPTIONS``' keys and values, per seed (same batches; fast: the small sizes of ``grid``)."""
    size = FAST_SIZE if fast else {}
    epochs = steps / steps_for(text_config(DIRECT, DIRECT, 0, **size))   # a fraction of one epoch
    return [text_config(label, DIRECT, seed, epochs=epochs, **size, **settings) for seed in seeds
            for label, settings in [(DIRECT, {}), (REAL_WORDS, {"prefix_words": DESCRIPTIONS})]]


def exercise_grid(seeds, fast: bool = False) -> list[dict]:
    """The exercises' runs per seed (fast: the small sizes of ``grid``)."""
    size = FAST_SIZE if fast else {}
    return [config for seed in seeds for config in
            [*[text_config(label, DIRECT, seed, **size, **settings) for label, settings in EXERCISE_RUNS.items()],
             text_config(EQUAL_BUDGET, "prompt tuning", seed, **size, num_virtual_tokens=120)]]


EXERCISES = Study(
    chapter="09",
    slug="prefix_tuning_exercises",
    question="the worked solutions' runs: prefixes on the top layer only, peft's positions; prompt tuning at P = 120",
    grid=exercise_grid,
    run=run_text_config,
    estimate_seconds=estimate_text_seconds,
    primary=(),
    default_seeds=DEFAULT_SEEDS,
)
