"""Instruction tuning a decoder: answer-only labels, the loss against transformers' own, option scores,
and the course's tasks as instructions.

A tiny randomly initialised Llama (SmolLM2's architecture, 2 layers) stands in for the decoder: the
functions are checked against what transformers computes for the same model, not against a download.
"""

import pytest
import torch
from chat_tokenizer import CHATML, word_level_chat_tokenizer

from mtl_tutorial.data import load_text_tasks
from mtl_tutorial.data.instructions import ANSWERS as ANSWER_WORDS
from mtl_tutorial.data.instructions import INSTRUCTIONS, instruction_answers, instruction_prompts, option_answers
from mtl_tutorial.data.text_tasks import TASKS, TextTask
from mtl_tutorial.instruction import (
    IGNORE_INDEX,
    InstructionModel,
    calibrated_scores,
    answer_ids,
    answer_log_likelihoods,
    answer_loss,
    chat_prompt_ids,
    collate_answers,
    option_scores,
)

PAD = 0
PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
ANSWERS = [[20, 21, 2], [22, 2], [23, 24, 25, 2]]   # 2: the end-of-turn token


@pytest.fixture(scope="module")
def decoder():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, pad_token_id=PAD,
                         initializer_range=0.5)   # weights large enough that a rank-4 update can move the logits
    return LlamaForCausalLM(config).eval()


def test_collate_answers_masks_the_prompt_and_the_padding_out_of_the_labels():
    batch = collate_answers(PROMPTS, ANSWERS, PAD)
    assert batch.input_ids.shape == batch.labels.shape == batch.attention_mask.shape == (3, 7)
    assert batch.input_ids[0].tolist() == [5, 6, 7, 8, 20, 21, 2]
    assert batch.labels[0].tolist() == [IGNORE_INDEX] * 4 + [20, 21, 2]
    assert batch.input_ids[1].tolist() == [9, 10, 22, 2, PAD, PAD, PAD]
    assert batch.labels[1].tolist() == [IGNORE_INDEX, IGNORE_INDEX, 22, 2] + [IGNORE_INDEX] * 3
    assert batch.attention_mask[1].tolist() == [1, 1, 1, 1, 0, 0, 0]
    assert batch.labels[2].tolist() == [IGNORE_INDEX] * 3 + [23, 24, 25, 2]
    assert int((batch.labels != IGNORE_INDEX).sum()) == sum(map(len, ANSWERS))


def test_collate_answers_refuses_what_would_train_on_nothing_or_cut_the_answer():
    with pytest.raises(ValueError, match="example 1 has no answer tokens"):
        collate_answers(PROMPTS[:2], [[20], []], PAD)
    with pytest.raises(ValueError, match="example 0 has an empty prompt"):
        collate_answers([[]], [[20]], PAD)
    with pytest.raises(ValueError, match="got 3 prompts but 2 answers"):
        collate_answers(PROMPTS, ANSWERS[:2], PAD)
    with pytest.raises(ValueError, match=r"example 0 is 7 tokens \(4 prompt \+ 3 answer\), over max_length = 6; shorten"):
        collate_answers(PROMPTS, ANSWERS, PAD, max_length=6)
    with pytest.raises(ValueError, match="no examples"):
        collate_answers([], [], PAD)


def test_answer_loss_is_transformers_causal_lm_loss_on_the_same_labels(decoder):
    batch = collate_answers(PROMPTS, ANSWERS, PAD)
    out = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels)
    assert answer_loss(out.logits, batch.labels).item() == pytest.approx(out.loss.item(), rel=1e-6)


def test_answer_loss_predicts_the_next_token_and_only_the_answers():
    """A hand-made case: position j's logits are scored on token j + 1, prompt targets never count."""
    vocab = 30
    logits = torch.zeros(1, 5, vocab)
    logits[0, 2, 20] = 5.0   # position 2 (last prompt token) predicts the first answer token, 20
    logits[0, 3, 21] = 5.0   # position 3 predicts 21
    logits[0, 0, 9] = -50.0  # a prompt target: must not count
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 20, 21]])
    right = -torch.log_softmax(torch.tensor([5.0] + [0.0] * (vocab - 1)), 0)[0]
    assert answer_loss(logits, labels).item() == pytest.approx(right.item(), rel=1e-6)
    logits.requires_grad_(True)
    answer_loss(logits, labels).backward()
    assert logits.grad[0, :2].abs().sum() == 0 and logits.grad[0, 4].abs().sum() == 0   # no target there
    assert logits.grad[0, 2].abs().sum() > 0 and logits.grad[0, 3].abs().sum() > 0


def test_answer_loss_weighs_answer_tokens_not_examples_and_ignores_padding(decoder):
    """The batch's loss is the token-weighted mean of each example's loss computed alone (no padding)."""
    batch = collate_answers(PROMPTS, ANSWERS, PAD)
    together = answer_loss(decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits, batch.labels)
    alone = []
    for prompt, answer in zip(PROMPTS, ANSWERS):
        one = collate_answers([prompt], [answer], PAD)
        alone.append(answer_loss(decoder(input_ids=one.input_ids).logits, one.labels).item() * len(answer))
    assert together.item() == pytest.approx(sum(alone) / sum(map(len, ANSWERS)), rel=1e-5)


def test_answer_loss_and_log_likelihoods_refuse_bad_shapes_and_empty_targets():
    with pytest.raises(ValueError, match=r"logits must be \(B, L, V\) and labels \(B, L\), got \(2, 3\) and \(2, 3\)"):
        answer_loss(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="no answer tokens"):
        answer_loss(torch.zeros(1, 3, 5), torch.full((1, 3), IGNORE_INDEX))


def test_answer_log_likelihoods_sum_each_rows_answer_tokens(decoder):
    batch = collate_answers(PROMPTS, ANSWERS, PAD)
    logits = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    sums = answer_log_likelihoods(logits, batch.labels)
    for i, (prompt, answer) in enumerate(zip(PROMPTS, ANSWERS)):
        ids = torch.tensor([[*prompt, *answer]])
        log_probs = decoder(input_ids=ids).logits[0].log_softmax(-1)
        by_hand = sum(log_probs[len(prompt) - 1 + k, token] for k, token in enumerate(answer))
        assert sums[i].item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert (-sums.sum() / sum(map(len, ANSWERS))).item() == pytest.approx(answer_loss(logits, batch.labels).item(), rel=1e-5)


def test_option_scores_agree_with_one_sequence_at_a_time_for_any_batch_size(decoder):
    options = [[20, 2], [20, 21, 2], [30, 2]]   # the first is a prefix of the second but for the end token
    scores = option_scores(decoder, PROMPTS, options, PAD, batch_size=4)
    assert scores.shape == (3, 3)
    for i, prompt in enumerate(PROMPTS):
        for k, option in enumerate(options):
            one = collate_answers([prompt], [option], PAD)
            alone = answer_log_likelihoods(decoder(input_ids=one.input_ids).logits, one.labels)
            assert scores[i, k].item() == pytest.approx(alone.item(), rel=1e-5)
    assert torch.allclose(option_scores(decoder, PROMPTS, options, PAD, batch_size=1), scores, atol=1e-5)


def test_option_scores_pick_the_answer_a_decoder_was_trained_to_give(decoder):
    """After a few steps of answer_loss on prompt -> option 1, argmax picks option 1 for that prompt."""
    import copy

    model = copy.deepcopy(decoder).train()
    options = [[20, 2], [21, 2], [22, 2]]
    batch = collate_answers([PROMPTS[0]], [options[1]], PAD)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        optimizer.zero_grad()
        answer_loss(model(input_ids=batch.input_ids).logits, batch.labels).backward()
        optimizer.step()
    assert option_scores(model.eval(), [PROMPTS[0]], options, PAD).argmax(1).tolist() == [1]


def test_option_scores_refuse_empty_input(decoder):
    with pytest.raises(ValueError, match="no prompts"):
        option_scores(decoder, [], [[2]], PAD)
    with pytest.raises(ValueError, match="at least one token"):
        option_scores(decoder, PROMPTS, [[20], []], PAD)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        option_scores(decoder, PROMPTS, [[20]], PAD, batch_size=0)


def _tokenizer(chat_template):
    tokenizer = word_level_chat_tokenizer(["Is", "it", "good", "?", "Be", "brief", "."], chat_template)
    return tokenizer, tokenizer.get_vocab()


def test_chat_prompt_ids_end_where_the_assistant_answers():
    tokenizer, ids = _tokenizer(CHATML)
    got = chat_prompt_ids(tokenizer, "Is it good?")
    want = ["<|im_start|>", "user", "\n", "Is", "it", "good", "?", "<|im_end|>", "\n", "<|im_start|>", "assistant", "\n"]
    assert got == [ids[w] for w in want]
    with_system = chat_prompt_ids(tokenizer, "Is it good?", system="Be brief.")
    assert with_system[:7] == [ids[w] for w in ["<|im_start|>", "system", "\n", "Be", "brief", ".", "<|im_end|>"]]
    assert with_system[-len(got):] == got


def test_chat_prompt_ids_needs_a_chat_template():
    tokenizer, _ = _tokenizer(None)
    with pytest.raises(ValueError, match="has no chat template, so it cannot say where the assistant's answer starts"):
        chat_prompt_ids(tokenizer, "Is it good?")


def test_answer_ids_end_with_the_end_of_turn_token():
    tokenizer, ids = _tokenizer(CHATML)
    assert answer_ids(tokenizer, "good") == [ids["good"], ids["<|im_end|>"]]
    with pytest.raises(ValueError, match="has no tokens"):
        answer_ids(tokenizer, "")
    tokenizer.eos_token = None
    with pytest.raises(ValueError, match="has no eos_token"):
        answer_ids(tokenizer, "good")


def test_every_task_has_an_instruction_that_names_each_of_its_distinct_answers():
    assert set(INSTRUCTIONS) == set(ANSWER_WORDS) == set(TASKS)
    train = load_text_tasks(split="train")
    for name, task in train.items():
        options = option_answers(task)
        assert len(set(options)) == task.num_classes, f"{name}: two classes share an answer"
        assert all(option in INSTRUCTIONS[name] for option in options), f"{name}: an answer the prompt does not offer"


def test_instruction_prompts_and_answers_follow_the_texts_and_labels():
    tasks = load_text_tasks(["sentiment", "pos"], split="test", max_per_task=20)
    for task in tasks.values():
        prompts, answers = instruction_prompts(task), instruction_answers(task)
        assert len(prompts) == len(answers) == len(task)
        for i in (0, 7, 19):
            assert prompts[i] == INSTRUCTIONS[task.name].format(text=task.texts[i])
            assert answers[i] == ANSWER_WORDS[task.name][task.label_names[task.labels[i]]]


def test_instruction_prompts_can_cut_long_texts_to_their_first_words():
    task = TextTask("sentiment", ["one two  three\nfour five", "six"], torch.tensor([0, 2]), ["negative", "neutral", "positive"],
                    "drug_reviews")
    assert instruction_prompts(task, max_words=3) == [INSTRUCTIONS["sentiment"].format(text="one two three"),
                                                      INSTRUCTIONS["sentiment"].format(text="six")]
    with pytest.raises(ValueError, match="max_words must be a positive int or None, got 0"):
        instruction_prompts(task, max_words=0)


def test_a_task_without_answer_words_is_refused_by_name():
    unknown = TextTask("topic", ["a text"], torch.tensor([0]), ["sports"], "news")
    with pytest.raises(ValueError, match="no instruction for task 'topic'"):
        instruction_prompts(unknown)
    relabelled = TextTask("pos", ["a text"], torch.tensor([0]), ["pronoun"], "wordnet_glosses")
    with pytest.raises(ValueError, match=r"labels with no answer words: pronoun; add them to ANSWERS\['pos'\]"):
        option_answers(relabelled)


def test_prompt_loss_makes_every_real_token_a_target_and_pad_to_fixes_the_length():
    batch = collate_answers(PROMPTS, ANSWERS, PAD, pad_to=9, prompt_loss=True)
    assert batch.input_ids.shape == (3, 9)
    real = batch.attention_mask.bool()
    assert torch.equal(batch.labels[real], batch.input_ids[real]) and (batch.labels[~real] == IGNORE_INDEX).all()
    assert torch.equal(batch.inputs, torch.stack([batch.input_ids, batch.attention_mask], 1))
    with pytest.raises(ValueError, match=r"pad_to = 6 is shorter than the longest example \(7 tokens\)"):
        collate_answers(PROMPTS, ANSWERS, PAD, pad_to=6)


def test_instruction_model_drops_the_padding_columns_and_keeps_the_logits(decoder):
    batch = collate_answers(PROMPTS, ANSWERS, PAD, pad_to=12)
    model = InstructionModel(decoder)
    logits = model(batch.inputs, "sentiment")
    assert logits.shape[:2] == (3, 7), "the 5 columns of padding past the longest example are not run"
    full = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.allclose(logits, full[:, :7], atol=1e-5)
    assert answer_loss(logits, batch.labels).item() == pytest.approx(answer_loss(full, batch.labels).item(), rel=1e-5)
    mixed = model(batch.inputs, ["pos", "sentiment", "pos"])
    assert list(mixed) == ["pos", "sentiment"] and mixed["pos"].positions.tolist() == [0, 2]
    assert torch.equal(mixed["pos"].outputs, logits[[0, 2]])
    with pytest.raises(ValueError, match=r"inputs must be \(B, 2, L\)"):
        model(batch.input_ids, "pos")
    with pytest.raises(ValueError, match="one task name per example: 2 names for 3 examples"):
        model(batch.inputs, ["pos", "pos"])
    with pytest.raises(ValueError, match="targets past the logits' 7 positions"):
        answer_loss(logits, collate_answers(PROMPTS, ANSWERS, PAD, pad_to=12, prompt_loss=True).labels.roll(5, 1))


def test_train_tunes_a_shared_lora_on_two_instruction_tasks_and_leaves_the_decoder_frozen(decoder):
    """training.train with InstructionModel and answer_loss: one LoRA learns both tasks' answers."""
    import copy

    from mtl_tutorial.data import MultiTaskDataset, multitask_loader
    from mtl_tutorial.lora import apply_lora
    from mtl_tutorial.training import train

    torch.manual_seed(0)
    lm = apply_lora(copy.deepcopy(decoder), target_modules=("q_proj", "v_proj", "o_proj", "down_proj"), r=4, alpha=8)
    frozen_before = {name: p.clone() for name, p in lm.named_parameters() if not p.requires_grad}
    options = {"first": [[20, 2], [21, 2]], "second": [[22, 2], [23, 2], [24, 2]]}
    prompts = {"first": [[5, 6], [7, 8], [9, 10, 11]], "second": [[12, 13], [14, 15, 16], [17, 18]]}
    answers = {"first": [0, 1, 0], "second": [2, 0, 1]}
    data = {}
    for task in options:
        batch = collate_answers(prompts[task], [options[task][k] for k in answers[task]], PAD, pad_to=8)
        data[task] = (batch.inputs, batch.labels)
    loader = multitask_loader(MultiTaskDataset(data), batch_size=3, strategy="uniform", seed=0)
    model = InstructionModel(lm)
    history = train(model, loader, {task: answer_loss for task in options}, num_steps=60, lr=2e-2, progress=False)
    for task in options:
        losses = [loss for loss in history.losses[task] if loss == loss]   # the steps with a batch of this task
        assert losses[-1] < 0.25 * losses[0], f"{task}: answer loss {losses[0]:.3f} -> {losses[-1]:.3f}"
        predicted = option_scores(model.lm, prompts[task], options[task], PAD).argmax(1).tolist()
        assert predicted == answers[task]
    assert all(torch.equal(p, frozen_before[name]) for name, p in lm.named_parameters() if not p.requires_grad)


def test_calibrated_scores_divide_each_option_by_the_models_favour_for_it_on_content_free_inputs():
    """Against Zhao et al.'s matrix form: q = W p / sum(W p), W = diag(mean of the content-free probabilities)^-1."""
    scores = torch.log(torch.tensor([[0.70, 0.20, 0.10], [0.60, 0.35, 0.05], [0.50, 0.10, 0.40]]))
    content_free = torch.log(torch.tensor([[0.80, 0.15, 0.05], [0.60, 0.30, 0.10]]))
    prior = torch.tensor([0.70, 0.225, 0.075])   # the mean of the two content-free distributions
    W = torch.diag(1 / prior)
    expected = torch.stack([W @ p / (W @ p).sum() for p in scores.exp()])
    calibrated = calibrated_scores(scores, content_free)
    assert torch.allclose(calibrated.softmax(1), expected, atol=1e-6)
    assert scores.argmax(1).tolist() == [0, 0, 0] and calibrated.argmax(1).tolist() == [2, 1, 2]
    assert torch.allclose(calibrated_scores(scores + 5.0, content_free - 2.0), calibrated, atol=1e-5), \
        "only the options' relative scores matter"
    with pytest.raises(ValueError, match=r"content_free \(M, K\) with M >= 1, got \(3, 3\) and \(2, 2\)"):
        calibrated_scores(scores, content_free[:, :2])
