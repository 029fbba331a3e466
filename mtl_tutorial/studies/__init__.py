"""Studies: each chapter's experiment at the size its question needs (``runner`` says how they run).

    from mtl_tutorial.studies import get_study, load_study
    study = get_study("07")             # the grid, the run function, the primary comparisons
    runs = get_study("07", exercises=True)  # the runs its worked solutions need
    results = load_study(study)         # notebooks/results/07_adapter_tuning.jsonl, read back

One module per chapter: ``hard_parameter_sharing`` (02), ``soft_sharing`` (03), ``training_schedules`` (04),
``dynamic_task_weighting`` (05), ``gradient_alignment`` (06), ``adapter_tuning`` (07), ``lora`` (08),
``prefix_tuning`` (09), ``peft_showdown`` (10), ``adversarial_and_meta_learning`` (11), ``instruction_tuning``
(12, whose chapter is not written yet: a GPU study); a chapter's worked
solutions' runs (``EXERCISES``) live in its module, or in the module ``EXERCISE_MODULES`` names
(``soft_sharing_exercises``). Shared: ``feature_tasks`` (the four shipped tasks on frozen features) and
``text_runs`` (one PEFT run on the text tasks). ``mtl-tutorial study NN`` runs one from the command line.
"""

from __future__ import annotations

import importlib

from mtl_tutorial.studies.runner import (
    Study,
    StudyResults,
    config_hash,
    history_from_row,
    load_study,
    reproduction_verdict,
    run_configs,
    run_inline,
    run_study,
)

STUDY_MODULES = {"02": "hard_parameter_sharing", "03": "soft_sharing", "04": "training_schedules", "05": "dynamic_task_weighting",
                 "06": "gradient_alignment", "07": "adapter_tuning", "08": "lora", "09": "prefix_tuning", "10": "peft_showdown",
                 "11": "adversarial_and_meta_learning", "12": "instruction_tuning"}
EXERCISE_MODULES = {"03": "soft_sharing_exercises"}   # where a chapter's EXERCISES has a module of its own


def get_study(chapter: str, exercises: bool = False) -> Study:
    """The study of chapter ``chapter`` ("07" or 7); exercises: the runs of its worked solutions instead."""
    key = f"{int(chapter):02d}" if str(chapter).isdigit() else str(chapter)
    if key not in STUDY_MODULES:
        raise ValueError(f"chapter {chapter!r} has no study; studies exist for chapters: {', '.join(STUDY_MODULES)}")
    name = EXERCISE_MODULES.get(key, STUDY_MODULES[key]) if exercises else STUDY_MODULES[key]
    module = importlib.import_module(f"mtl_tutorial.studies.{name}")
    if exercises and not hasattr(module, "EXERCISES"):
        raise ValueError(f"chapter {key} has no study of its worked solutions' runs; mtl-tutorial study {key} "
                         f"runs the chapter's")
    return module.EXERCISES if exercises else module.STUDY


__all__ = ["EXERCISE_MODULES", "STUDY_MODULES", "Study", "StudyResults", "config_hash", "get_study", "history_from_row", "load_study",
           "reproduction_verdict", "run_configs", "run_inline", "run_study"]
