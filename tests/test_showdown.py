"""The PEFT showdown harness: what each method trains, what a task's file holds, one row per run."""

import re

import pytest
import torch
from torch import nn

from mtl_tutorial.backbone import count_parameters, load_backbone
from mtl_tutorial.data import load_text_tasks
from mtl_tutorial.prefix import prefix_from_text
from mtl_tutorial.showdown import (
    FROZEN, METHODS, ShowdownRow, build_model, run_method, showdown, showdown_table, task_file_bytes, task_tensors,
)

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

TASKS = ["supersense", "pos"]
HIDDEN, LAYERS = 384, 6


@pytest.fixture(scope="module")
def backbone():
    return load_backbone()


@pytest.fixture(scope="module")
def data():
    return (load_text_tasks(TASKS, split="train", max_per_task=16, seed=0),
            load_text_tasks(TASKS, split="test", max_per_task=8, seed=0))


def heads():
    torch.manual_seed(0)
    return {"supersense": nn.Linear(HIDDEN, 11), "pos": nn.Linear(HIDDEN, 4)}


HEADS = (HIDDEN + 1) * 11 + (HIDDEN + 1) * 4


@pytest.mark.parametrize("method, per_task_body", [
    (FROZEN, 0),
    ("LoRA r=4", LAYERS * 2 * 4 * (HIDDEN + HIDDEN)),          # query and value: r (in + out) each
    ("LoRA r=16", LAYERS * 2 * 16 * (HIDDEN + HIDDEN)),
    ("Houlsby adapters", LAYERS * 2 * (2 * HIDDEN * 64 + 64 + HIDDEN)),  # two adapters per layer
    ("Pfeiffer adapters", LAYERS * 1 * (2 * HIDDEN * 64 + 64 + HIDDEN)),
    ("prefix-tuning", LAYERS * 2 * 10 * HIDDEN),                # keys and values, P = 10 per layer
])
def test_each_method_trains_what_its_formula_says(backbone, method, per_task_body):
    model = build_model(method, *backbone, heads(), max_length=32)
    assert count_parameters(model, trainable_only=True) == HEADS + len(TASKS) * per_task_body


def test_shared_methods_train_one_body_for_all_tasks(backbone):
    encoder, tokenizer = backbone
    flags = [p.requires_grad for p in encoder.parameters()]
    full = build_model("full fine-tuning", encoder, tokenizer, heads(), 32)
    prompt = build_model("prompt tuning", encoder, tokenizer, heads(), 32)
    build_model("LoRA r=4", encoder, tokenizer, heads(), 32)
    assert count_parameters(full, trainable_only=True) == count_parameters(encoder) + HEADS
    assert count_parameters(prompt, trainable_only=True) == 10 * HIDDEN + HEADS
    shared = build_model("shared LoRA r=8", encoder, tokenizer, heads(), 32)
    assert count_parameters(shared, trainable_only=True) == LAYERS * 2 * 8 * (HIDDEN + HIDDEN) + HEADS  # one LoRA
    assert [p.requires_grad for p in encoder.parameters()] == flags  # the backbone given is left as it was
    with pytest.raises(ValueError, match="unknown method 'IA3'; the showdown's methods are: frozen features"):
        build_model("IA3", encoder, tokenizer, heads(), 32)


def test_a_task_file_holds_what_serving_that_task_needs_beyond_the_backbone(backbone):
    encoder, tokenizer = backbone
    frozen = build_model(FROZEN, encoder, tokenizer, heads(), 32)
    assert set(task_tensors(frozen, "pos")) == {"head.weight", "head.bias"}
    assert 4 * (HIDDEN + 1) * 4 < task_file_bytes(frozen, "pos") < 4 * (HIDDEN + 1) * 4 + 1000  # + the header
    full = build_model("full fine-tuning", encoder, tokenizer, heads(), 32)
    assert task_file_bytes(full, "pos") > 4 * count_parameters(encoder)  # the whole fine-tuned backbone
    prompt = build_model("prompt tuning", encoder, tokenizer, heads(), 32)
    assert set(task_tensors(prompt, "pos")) == {"trunk.encoder.prompt", "head.weight", "head.bias"}
    lora = build_model("LoRA r=4", encoder, tokenizer, heads(), 32)
    owned = lora.task_parameter_count("pos")
    assert 4 * owned < task_file_bytes(lora, "pos") < 4 * owned + 20_000  # save_task's file: its tensors + metadata
    with pytest.raises(ValueError, match="unknown task 'sentiment'"):
        task_tensors(frozen, "sentiment")


def test_run_method_fills_every_field_and_repeats_with_the_same_seed(backbone, data):
    train_tasks, test_tasks = data
    rows = [run_method("LoRA r=4", 3, *backbone, train_tasks, test_tasks, num_steps=2, batch_size=4) for _ in range(2)]
    row = rows[0]
    assert row.method == "LoRA r=4" and row.seed == 3 and set(row.scores) == set(TASKS)
    assert all(0 <= score <= 1 for score in row.scores.values())
    assert row.scores == rows[1].scores  # same seed, same heads, same batches
    assert row.trainable_parameters == HEADS + 2 * LAYERS * 2 * 4 * 2 * HIDDEN
    assert row.backbone_parameters == count_parameters(backbone[0])
    assert row.trainable_share == pytest.approx(row.trainable_parameters / row.backbone_parameters)
    assert set(row.task_file_bytes) == set(TASKS) and row.step_seconds > 0
    assert row.peak_memory_bytes > 4 * row.backbone_parameters and row.memory_measure == "cpu torch profiler"
    assert [len(losses) for losses in row.history.losses.values()] == [2, 2]
    assert row.mean_score == pytest.approx(sum(row.scores.values()) / 2)


def test_showdown_runs_seeds_outermost_and_computes_frozen_features_once(backbone, data, monkeypatch):
    import mtl_tutorial.showdown as showdown_module

    calls = []
    real = showdown_module.frozen_features
    monkeypatch.setattr(showdown_module, "frozen_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    rows = showdown([FROZEN, "LoRA r=4"], [0, 1], *backbone, *data, num_steps=2, batch_size=4, progress=False,
                    keep_models=["LoRA r=4"])
    assert [(row.method, row.seed) for row in rows] == [(FROZEN, 0), ("LoRA r=4", 0), (FROZEN, 1), ("LoRA r=4", 1)]
    assert [row.model is not None for row in rows] == [False, True, False, True]
    assert len(calls) == 2 * len(TASKS)  # train and test features of each task, once
    alone = run_method(FROZEN, 1, *backbone, *data, num_steps=2, batch_size=4)
    assert alone.scores == rows[2].scores
    with pytest.raises(ValueError, match="unknown method"):
        showdown(["LoRA"], [0], *backbone, *data, num_steps=1)


def test_table_shows_mean_and_std_over_seeds_beside_the_majority_class_and_says_what_costs_charge():
    def row(method, seed, supersense, pos):
        return ShowdownRow(method, seed, {"supersense": supersense, "pos": pos}, 1_000, 100_000,
                           {"supersense": 2_000_000, "pos": 4_000_000}, 0.25 + seed, 3_000_000, "cpu torch profiler")

    rows = [row("LoRA r=8", 0, 0.5, 0.8), row("LoRA r=8", 1, 0.6, 0.8), row(FROZEN, 0, 0.4, 0.7), row(FROZEN, 1, 0.4, 0.9),
            row("shared LoRA r=8", 0, 0.5, 0.8), row("shared LoRA r=8", 1, 0.5, 0.8)]
    lines = showdown_table(rows, majority={"supersense": 0.2, "pos": 0.5}).splitlines()
    assert "MB/task file" in lines[0] and "peak MB" in lines[0]
    assert lines[1].split() == ["majority", "class", "20.0", "50.0", "35.0"]
    assert lines[2].split() == ["LoRA", "r=8", "55.0", "±", "7.1", "80.0", "±", "0.0", "67.5", "±", "3.5",
                                "1,000", "(1.00", "%)", "3.00", "750", "3.0"]   # MB = 10^6 bytes
    assert lines[3].split()[2:8] == ["40.0", "±", "0.0", "80.0", "±", "14.1"]
    assert lines[3].split()[-3:] == ["3.00", "750†", "3.0†"]   # frozen features: the heads' step alone
    assert lines[4].split()[-3:] == ["3.00*", "750", "3.0"]    # shared: each task's file holds all shared weights
    assert lines[5] == ("(test accuracy in %, mean ± std over 2 seeds; ms/step: median over seeds of each run's median "
                        "step; peak MB: one training step, weights included, cpu torch profiler; MB = 10^6 bytes)")
    assert lines[6].startswith("* shared by the tasks: each task's file holds ALL the shared trained weights")
    assert lines[7].startswith("† frozen features: the heads' step alone; the backbone pass")
    only_lora = showdown_table(rows[:2]).splitlines()
    assert not any(line.startswith(("*", "†")) for line in only_lora)
    costs = showdown_table(rows, majority={"supersense": 0.2, "pos": 0.5}, with_scores=False).splitlines()
    assert costs[0].split() == ["method", "trainable", "MB/task", "file", "ms/step", "peak", "MB"]
    assert costs[1].split() == ["LoRA", "r=8", "1,000", "(1.00", "%)", "3.00", "750", "3.0"]   # no majority row, no scores
    assert costs[4].startswith("(2 seeds per method; ms/step")
    assert METHODS[0] == FROZEN


def test_lora_of_any_rank_and_on_every_linear_layer_builds_with_loras_step_size():
    from mtl_tutorial.lora import lora_layers
    from mtl_tutorial.showdown import ALL_LINEAR, BODY_LR, body_lr_of, build_model

    backbone, tokenizer = load_backbone()
    heads = {"a": nn.Linear(384, 2)}
    model = build_model("LoRA r=32", backbone, tokenizer, heads, 16, lora_targets=ALL_LINEAR)
    layers = lora_layers(model.trunk)
    assert len(layers) == 6 * 6 and all(layer.r == 32 for layer in layers.values())   # q, k, v, attention out, FFN in, FFN out
    assert not any("pooler" in name for name in layers)
    assert body_lr_of("LoRA r=32") == BODY_LR["LoRA r=8"] and body_lr_of("frozen features") is None
    for bad in ("LoRA r=0", "LoRA r=x", "lora r=8"):
        with pytest.raises(ValueError, match="'LoRA r=N' takes any rank"):
            body_lr_of(bad)


def test_prefix_variants_build_what_they_say_and_only_for_prefix_tuning(backbone):
    encoder, tokenizer = backbone
    direct = build_model("prefix-tuning", *backbone, heads(), max_length=32)
    reparameterised = build_model("prefix-tuning", *backbone, heads(), max_length=32, projection_hidden=16)
    assert reparameterised.trunk.prefix_encoder.projection_hidden == 16 and direct.trunk.prefix_encoder.projection_hidden is None
    top = build_model("prefix-tuning", *backbone, heads(), max_length=32, prefix_layers=[5], position_offset=10)
    assert count_parameters(top, trainable_only=True) == HEADS + len(TASKS) * 2 * 10 * HIDDEN
    assert top.trunk.position_offset == 10 and direct.trunk.position_offset == 0
    words = {"supersense": "the supersense of a word from its dictionary gloss, one of many",
             "pos": "the part of speech of a word from its dictionary gloss, noun or verb"}
    started = build_model("prefix-tuning", *backbone, heads(), max_length=32, prefix_words=words)
    for task, text in words.items():
        torch.testing.assert_close(started.trunk.prefix_encoder.encoders[task].prefix,
                                   prefix_from_text(encoder, tokenizer, text, 10), rtol=0, atol=0)
    with pytest.raises(ValueError, match="projection_hidden, prefix_layers change prefix-tuning's prefixes; 'LoRA r=4' has none"):
        build_model("LoRA r=4", *backbone, heads(), max_length=32, projection_hidden=16, prefix_layers=[5])
    with pytest.raises(ValueError, match="prefix_words needs direct prefixes and one text per task"):
        build_model("prefix-tuning", *backbone, heads(), max_length=32, prefix_words={"pos": words["pos"]})


def test_prefix_runs_record_how_far_each_prefix_moved_per_step(backbone, data):
    row = run_method("prefix-tuning", 0, *backbone, *data, num_steps=2, batch_size=8, projection_hidden=16, body_lr=1e-3)
    assert set(row.prefix_steps) == {"entry_rms", "parameter_step", "mean_abs"}
    assert all(len(values) == 2 for values in row.prefix_steps["entry_rms"].values())
    assert run_method("LoRA r=4", 0, *backbone, *data, num_steps=1, batch_size=8).prefix_steps is None


@pytest.mark.parametrize(("settings", "error", "message"), [
    ({"num_steps": 0}, ValueError, "num_steps must be >= 1, got 0"),
    ({"num_steps": 2.5}, TypeError, "num_steps must be an int >= 1, got float 2.5"),
    ({"max_length": 1}, ValueError, "max_length must be >= 2, got 1"),
    ({"head_lr": 0.0}, ValueError, "head_lr must be a finite step size > 0, got 0.0"),
    ({"body_lr": float("nan")}, ValueError, "body_lr must be a finite step size > 0, got nan"),
    ({"method": FROZEN, "features": {"train": {}, "test": {}}}, ValueError,
     "features lack train/supersense, train/pos, test/supersense, test/pos; pass"),
])
def test_run_method_refuses_bad_settings_before_training(backbone, data, settings, error, message):
    train_tasks, test_tasks = data
    arguments = {"method": "LoRA r=8", "seed": 0, "backbone": backbone[0], "tokenizer": backbone[1],
                 "train_tasks": train_tasks, "test_tasks": test_tasks, "num_steps": 1, "max_length": 16} | settings
    with pytest.raises(error, match=re.escape(message)):
        run_method(**arguments)


def test_showdown_and_its_table_refuse_an_empty_grid(backbone, data):
    with pytest.raises(ValueError, match=re.escape("nothing to run: methods [], seeds [0]; give at least one of each")):
        showdown([], [0], *backbone, *data, num_steps=1)
    with pytest.raises(ValueError, match="nothing to run"):
        showdown([FROZEN], [], *backbone, *data, num_steps=1)
    with pytest.raises(ValueError, match="rows is empty; pass the ShowdownRows"):
        showdown_table([])


def test_the_number_of_virtual_tokens_sets_prompt_and_prefix_sizes_and_nothing_else(backbone):
    model, tokenizer = backbone
    prompt = build_model("prompt tuning", model, tokenizer, heads(), 16, num_virtual_tokens=120)
    assert count_parameters(prompt, trainable_only=True) - HEADS == 120 * HIDDEN   # one prompt, shared by the tasks
    prefix = build_model("prefix-tuning", model, tokenizer, heads(), 16, num_virtual_tokens=3)
    assert count_parameters(prefix, trainable_only=True) - HEADS == 2 * 3 * LAYERS * 2 * HIDDEN   # per task: P·N·2H
    with pytest.raises(ValueError, match="num_virtual_tokens is P of prefix- and prompt tuning; 'LoRA r=8' has no virtual"):
        build_model("LoRA r=8", model, tokenizer, heads(), 16, num_virtual_tokens=20)
    with pytest.raises(ValueError, match="num_virtual_tokens must be >= 1, got 0"):
        build_model("prompt tuning", model, tokenizer, heads(), 16, num_virtual_tokens=0)
