"""Chapter 10's study: every PEFT method of the showdown at one epoch of the WordNet tasks, and
merging the per-task LoRA updates.

The runs are chapter 07's kind (``text_runs``): all training glosses at full length, one epoch of mixed
batches, complete test sets, the customary step sizes untuned for every method; frozen features,
full fine-tuning and both adapters are the same configs as chapter 07's and are borrowed from its
results file. The per-task LoRA r = 8 runs also test three merges of their two task vectors into one
set of weights (``MERGES``), so merging is measured on the same trained runs, seed by seed.

Seeds: 5, from the same pilot and rule as chapter 07 (``adapter_tuning.DEFAULT_SEEDS``).
"""

from __future__ import annotations

from mtl_tutorial.evidence import Comparison
from mtl_tutorial.merging import lora_task_vector, merged_lora_model, task_arithmetic, ties_merge
from mtl_tutorial.showdown import FROZEN, METHODS
from mtl_tutorial.studies.adapter_tuning import DEFAULT_SEEDS
from mtl_tutorial.studies.runner import Study
from mtl_tutorial.studies.text_runs import FAST_SIZE, estimate_text_seconds, task_data, text_config, train_text_config
from mtl_tutorial.training import accuracy, evaluate

MERGED = "LoRA r=8"     # whose per-task updates are merged
TIES_DENSITY = 0.2      # the fraction of each ΔW that TIES keeps
MERGES = ("task arithmetic, λ = 1", "task arithmetic, λ = 1/T", f"TIES, density {TIES_DENSITY}")
PRIMARY = (
    Comparison("LoRA r=8", FROZEN),                 # does a PEFT method beat heads on frozen features?
    Comparison("full fine-tuning", "LoRA r=8"),     # what does it give up against training every weight?
    Comparison("LoRA r=8", "shared LoRA r=8"),      # one update per task, or one shared by the tasks?
)
# the order of a seed's runs: chapter 07's configs last, so that they are usually borrowed by then
ORDER = [m for m in METHODS if m not in (FROZEN, "full fine-tuning", "Houlsby adapters", "Pfeiffer adapters")] + [
    FROZEN, "Houlsby adapters", "Pfeiffer adapters", "full fine-tuning"]


def merged_scores(model, test_tasks) -> dict[str, dict[str, float]]:
    """{merge: {task: test accuracy}} of the three ``MERGES`` of a trained ``MultiTaskLoRAModel``."""
    tasks = list(test_tasks)
    vectors = [lora_task_vector(model, task) for task in tasks]
    merged = {MERGES[0]: task_arithmetic(vectors),
              MERGES[1]: task_arithmetic(vectors, [1 / len(tasks)] * len(tasks)),
              MERGES[2]: ties_merge(vectors, density=TIES_DENSITY)}
    data = {task: (list(test_tasks[task].texts), test_tasks[task].labels) for task in tasks}
    scores = {}
    for name, deltas in merged.items():
        result = evaluate(merged_lora_model(model, deltas), data, {"accuracy": accuracy})
        scores[name] = {task: result[f"{task}/accuracy"] for task in tasks}
    return scores


def run(config: dict, device=None, keep_model: bool = False):
    """A showdown run; the merged method's runs add ``metrics["merged_scores"]``."""
    merges = config.get("merges", False)
    metrics, row = train_text_config(config, device, keep_model=keep_model or merges)
    if merges:
        _, test_tasks = task_data(config)
        metrics["merged_scores"] = merged_scores(row.model, test_tasks)
    return metrics, row.model if keep_model else None


def grid(seeds, fast: bool = False) -> list[dict]:
    """Every method per seed, seeds outermost; fast: chapter 07's small sizes (24 / 16 glosses)."""
    size = FAST_SIZE if fast else {}
    return [text_config(method, method, seed, **size, **({"merges": True} if method == MERGED else {}))
            for seed in seeds for method in ORDER]


STUDY = Study(
    chapter="10",
    slug="peft_showdown",
    question="every PEFT method at one epoch against frozen features and full fine-tuning; merging LoRA tasks",
    grid=grid,
    run=run,
    estimate_seconds=estimate_text_seconds,
    primary=PRIMARY,
    default_seeds=DEFAULT_SEEDS,
    borrow_from=("07_adapter_tuning",),
)
