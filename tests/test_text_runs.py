"""One study run on the text tasks: its config, its steps, what its results line stores, and the
merges chapter 10's LoRA runs add."""

import math

import pytest

from mtl_tutorial.studies import get_study, history_from_row, run_configs, run_inline
from mtl_tutorial.studies.peft_showdown import MERGES
from mtl_tutorial.studies.runner import config_hash
from mtl_tutorial.studies.text_runs import (
    FAST_SIZE, estimate_text_seconds, run_text_config, showdown_rows, steps_for, task_data, text_config,
)

TINY = {"train_examples": 8, "test_examples": 4, "max_length": 16, "batch_size": 4}


def test_a_config_records_what_decides_the_run_and_extras_only_when_given():
    config = text_config("x", "Pfeiffer adapters", 3, **TINY)
    assert config["body_lr"] == 1e-3 and config["head_lr"] == 1e-2 and config["bottleneck_size"] == 64
    assert "activation" not in config and text_config("x", "LoRA r=8", 3)["bottleneck_size"] is None
    assert config_hash(config) != config_hash(text_config("x", "Pfeiffer adapters", 3, activation="relu", **TINY))
    with pytest.raises(ValueError, match="unknown method 'IA3'"):
        text_config("x", "IA3", 0)
    with pytest.raises(ValueError, match="epochs must be > 0"):
        text_config("x", "LoRA r=8", 0, epochs=0)


def test_a_step_size_other_than_the_customary_one_is_a_new_run_and_old_configs_keep_their_hashes():
    # chapter 10's prefix-tuning, seed 0, as its results file holds it: chapter 09 borrows it by this hash
    assert config_hash(text_config("prefix-tuning", "prefix-tuning", 0)) == "a64624d4ee776c62"
    assert text_config("x", "prefix-tuning", 0, body_lr=None)["body_lr"] == 1e-2
    slower = text_config("x", "prefix-tuning", 0, body_lr=1e-3, projection_hidden=512)
    assert slower["body_lr"] == 1e-3 and slower["projection_hidden"] == 512
    with pytest.raises(ValueError, match="'frozen features' trains nothing inside the backbone: leave body_lr None"):
        text_config("x", "frozen features", 0, body_lr=1e-3)
    with pytest.raises(ValueError, match="body_lr must be > 0, got 0"):
        text_config("x", "prefix-tuning", 0, body_lr=0)


def test_steps_are_epochs_times_the_batches_of_one_pass_over_all_tasks():
    config = text_config("x", "frozen features", 0, **TINY)   # 2 tasks x 8 examples, batches of 4
    assert steps_for(config) == 4 and steps_for({**config, "epochs": 2.5}) == 10
    train, test = task_data(config)
    assert [len(train[t]) for t in config["tasks"]] == [8, 8] and [len(test[t]) for t in config["tasks"]] == [4, 4]
    assert estimate_text_seconds({**config, "epochs": 2}) > estimate_text_seconds(config) > 0


def test_a_run_stores_scores_counts_costs_and_its_losses_step_by_step():
    config = text_config("LoRA", "LoRA r=4", 0, **TINY)
    metrics, model = run_text_config(config, keep_model=True)
    assert model is not None and run_text_config(config)[1] is None
    for task in config["tasks"]:
        assert metrics["correct"][task] == round(metrics["scores"][task] * metrics["test_examples"][task])
        assert 0 <= metrics["majority"][task] <= 1
    assert metrics["num_steps"] == steps_for(config) == len(metrics["history"]["steps"])
    history = history_from_row({"config": config, "metrics": metrics})
    losses = metrics["history"]["losses"]
    for task in config["tasks"]:
        assert len(history.loss_curve(task)[1]) == sum(v is not None for v in losses[task])
    assert all(v is None or math.isfinite(v) for values in losses.values() for v in values)
    row = showdown_rows([{"config": config, "metrics": metrics}])[0]
    assert row.method == "LoRA" and row.scores == metrics["scores"] and row.trainable_parameters > 0
    with pytest.raises(ValueError, match="stored no history"):
        history_from_row({"config": config, "metrics": {}})


def test_chapter_10s_lora_runs_also_score_their_merges():
    study = get_study("10")
    config = {**next(c for c in study.configs(seeds=[0], fast=True) if c.get("merges")), **TINY}
    row = run_configs(study, [config], progress=False)[0]
    merged = row["metrics"]["merged_scores"]
    assert list(merged) == list(MERGES) and all(set(scores) == set(config["tasks"]) for scores in merged.values())


def test_run_inline_runs_a_grid_in_memory_and_says_so():
    study = get_study("07")
    tiny_grid = study.__class__(**{**study.__dict__, "grid": lambda seeds, fast: [
        text_config("frozen features", "frozen features", seed, **TINY) for seed in seeds]})
    results = run_inline(tiny_grid, progress=False)
    assert results.path is None and results.seeds() == [0, 1]
    assert results.describe().startswith("run inline (fast mode's small grid, no file): 2 runs")
    assert set(FAST_SIZE) <= set(text_config("x", "frozen features", 0))   # the fast grid shrinks real config keys


def test_first_batch_tokens_counts_the_batch_whose_step_memory_the_run_measured(monkeypatch):
    import mtl_tutorial.showdown as showdown
    from mtl_tutorial.studies.text_runs import first_batch_tokens, train_text_config

    measured = []
    real = showdown.training_step_memory

    def spy(model, batch, loss_fns, **options):
        measured.append(model.trunk.tokenizer(list(batch.inputs), padding=True, truncation=True,
                                              max_length=model.trunk.max_length, return_tensors="pt")["input_ids"].numel())
        return real(model, batch, loss_fns, **options)

    monkeypatch.setattr(showdown, "training_step_memory", spy)
    for seed in (0, 1):
        config = text_config("LoRA r=1", "LoRA r=1", seed, **TINY)
        train_text_config(config)
        assert first_batch_tokens(config) == measured[-1]
    other = text_config("LoRA r=1", "LoRA r=1", 0, **(TINY | {"batch_size": 2}))
    assert first_batch_tokens(other) < measured[0]   # half the batch: fewer tokens (a wrong batch size would show)
