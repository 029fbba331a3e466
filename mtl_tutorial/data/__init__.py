"""Data for the course: the shipped real text tasks, synthetic tasks, and multi-task loaders."""

from mtl_tutorial.data.synthetic import CorrelatedTasks, make_correlated_tasks
from mtl_tutorial.data.text_tasks import (
    TASK_SOURCES,
    TASKS,
    TextTask,
    load_text_tasks,
    task_summary,
    tasks_sharing_inputs,
)
from mtl_tutorial.data.multitask import MultiTaskBatch, MultiTaskBatchSampler, MultiTaskDataset, MultiTaskItem, collate_multitask, multitask_loader, task_probabilities
from mtl_tutorial.data.toy_landscape import TOY_STARTS, toy_losses, toy_pareto_set, toy_trajectories
