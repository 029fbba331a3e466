"""Chapter 12's study, its plumbing at fast size: a tiny random Llama and a word-level tokenizer stand in for
SmolLM2 (the real decoder is tested in tests/test_decoder.py; the study itself is GPU work)."""

import math

import pytest
import torch
from chat_tokenizer import word_level_chat_tokenizer

import mtl_tutorial.studies.instruction_tuning as study_12
from mtl_tutorial.data.instructions import ANSWERS
from mtl_tutorial.studies import get_study
from mtl_tutorial.studies.instruction_tuning import ARMS, MULTI_TASK, PRIMARY, PROMPT_LOSS, SINGLE_TASK, TASKS, ZERO_SHOT

@pytest.fixture(scope="module")
def tiny_decoder():
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = word_level_chat_tokenizer(sorted({w for answers in ANSWERS.values() for a in answers.values() for w in a.split()}))
    vocab = tokenizer.get_vocab()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id, initializer_range=0.5)
    return LlamaForCausalLM(config).eval(), tokenizer


@pytest.fixture(scope="module")
def fast_rows(tiny_decoder):
    patch = pytest.MonkeyPatch()
    patch.setattr(study_12, "_decoder", lambda: tiny_decoder)
    try:
        weights = {name: p.clone() for name, p in tiny_decoder[0].named_parameters()}
        rows = {(c["label"], c["seed"]): study_12.run(c)[0] for c in study_12.grid((0, 1), fast=True)}
        assert all(torch.equal(p, weights[name]) for name, p in tiny_decoder[0].named_parameters()), \
            "every trained arm tunes a copy: the shared decoder is unchanged"
    finally:
        patch.undo()
    return rows


def test_the_grid_declares_its_primaries_and_differs_between_arms_only_in_the_arm():
    study = get_study("12")
    assert study.name == "12_instruction_tuning" and study.primary == PRIMARY
    labels = {c["label"] for c in study.configs()}
    assert labels == set(ARMS) and all({c.a, c.b} <= labels for c in PRIMARY)
    assert len(study.configs()) == len(ARMS) * len(study.default_seeds) >= 4 * 5
    assert all(c["epochs"] >= 1 and c["tasks"] == list(TASKS) for c in study.configs())
    first = [c for c in study.configs() if c["seed"] == 0]
    for c in first:
        changed = {k for k in c if c[k] != first[1][k]}   # against the multi-task run
        assert changed <= {"label", "arm", "prompt_loss"}
    assert next(c for c in first if c["label"] == PROMPT_LOSS)["prompt_loss"] is True
    assert sum(c["prompt_loss"] for c in first) == 1
    with pytest.raises(ValueError, match="unknown arm 'LoRA'; arms are: zero-shot, "):
        study_12.config("LoRA", 0)


def test_every_arm_answers_every_task_beside_the_majority_class(fast_rows):
    for (label, seed), metrics in fast_rows.items():
        assert set(metrics["scores"]) == set(TASKS), label
        for task in TASKS:
            n = metrics["test_examples"][task]
            assert 0 <= metrics["scores"][task] <= 1 and metrics["correct"][task] == round(metrics["scores"][task] * n)
            assert 0 < metrics["majority"][task] <= 1
    for task in TASKS:   # the zero-shot arm does not depend on the seed
        assert fast_rows[(ZERO_SHOT, 0)]["scores"][task] == fast_rows[(ZERO_SHOT, 1)]["scores"][task]
    zero_shot = fast_rows[(ZERO_SHOT, 0)]   # and it is scored with contextual calibration too
    assert all(zero_shot["calibrated_scores"][t] == zero_shot["calibrated_correct"][t] / zero_shot["test_examples"][t]
               for t in TASKS)
    assert not any("calibrated_scores" in fast_rows[(label, 0)] for label in (MULTI_TASK, SINGLE_TASK, PROMPT_LOSS))


def test_the_multi_task_run_sees_each_example_once_and_each_single_task_run_the_same_steps_of_its_task(fast_rows):
    batches = math.ceil(8 / 4)   # fast size: 8 training texts per task, batches of 4
    multi, single = fast_rows[(MULTI_TASK, 0)]["history"], fast_rows[(SINGLE_TASK, 0)]["history"]
    assert len(multi["steps"]) == len(TASKS) * batches
    assert all(sum(v is not None for v in multi["losses"][t]) == batches for t in TASKS)
    assert len(single["steps"]) == batches and all(sum(v is not None for v in single["losses"][t]) == batches for t in TASKS)
    assert fast_rows[(ZERO_SHOT, 0)]["history"] == {"steps": [], "losses": {}}
    prompt_loss = fast_rows[(PROMPT_LOSS, 0)]["history"]
    assert prompt_loss["losses"] != multi["losses"], "the prompt's tokens are targets too: other losses"


def test_the_estimate_says_this_is_gpu_work():
    full = {c["label"]: study_12.estimate_seconds(c) for c in get_study("12").configs(seeds=[0])}
    assert full[MULTI_TASK] > full[ZERO_SHOT] > 3600   # hours on one CPU thread
    assert all(study_12.estimate_seconds(c) < 120 for c in get_study("12").configs(seeds=[0], fast=True))
