"""Prefix-tuning from scratch on the shipped MiniLM, checked against peft's prefix and prompt tuning."""

import contextlib
import copy
import warnings

import pytest
import torch
from torch import nn

from mtl_tutorial.backbone import count_parameters, default_backbone_path, load_backbone, quiet_transformers
from mtl_tutorial.data import MultiTaskDataset, multitask_loader
from mtl_tutorial.models import TextEncoderTrunk
from mtl_tutorial.multitask_peft import set_active_task
from mtl_tutorial.prefix import (
    MultiTaskPrefixModel,
    PrefixEncoder,
    PrefixSelfAttention,
    PrefixStepRecorder,
    PromptTunedEncoder,
    apply_prefix,
    copy_to_peft,
    extend_attention_mask,
    prefix_from_text,
    prefix_parameter_count,
)
from mtl_tutorial.training import train

TEXTS = [
    "a showy tree fern of New Zealand",
    "I recently received an injection in a walk-in ER for a cluster headache and it helped a lot",
    "move fast",
    "the pills made me dizzy",
]
CLASSES = {"sentiment": 3, "pos": 4}


@pytest.fixture(scope="module")
def backbone():
    return load_backbone()


@pytest.fixture(scope="module")
def classifier():
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    with quiet_transformers():
        return AutoModelForSequenceClassification.from_pretrained(default_backbone_path(), num_labels=3).eval()


def make_model(backbone, projection_hidden=None, seed=0):
    encoder, tokenizer = backbone
    torch.manual_seed(seed)
    heads = {task: nn.Linear(encoder.config.hidden_size, k) for task, k in CLASSES.items()}
    trunk = TextEncoderTrunk(copy.deepcopy(encoder), tokenizer, max_length=32)
    return MultiTaskPrefixModel(trunk, heads, num_virtual_tokens=3, projection_hidden=projection_hidden).eval()


@pytest.mark.parametrize("projection_hidden", [None, 32])
def test_logits_equal_peft_prefix_tuning_on_the_bert_classifier(backbone, classifier, projection_hidden):
    from peft import PrefixTuningConfig, get_peft_model

    P = 4
    torch.manual_seed(1)
    ours = apply_prefix(copy.deepcopy(classifier), P, projection_hidden)  # pooler and classifier: the same copies
    config = PrefixTuningConfig(
        task_type="SEQ_CLS", num_virtual_tokens=P, prefix_projection=projection_hidden is not None,
        encoder_hidden_size=projection_hidden or classifier.config.hidden_size,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        theirs = get_peft_model(copy.deepcopy(classifier), config).eval()
    copy_to_peft(ours.prefix_encoder, theirs)
    batch = backbone[1](TEXTS, padding=True, return_tensors="pt")
    length = batch["input_ids"].shape[1]
    with torch.no_grad():
        reference = theirs(**batch).logits
        # peft treats the prefix as P earlier tokens and moves the real ones to positions P ... P + L - 1
        shifted = ours(**batch, position_ids=torch.arange(P, P + length)[None]).logits
    torch.testing.assert_close(shifted, reference, rtol=0, atol=1e-5)
    assert theirs.prompt_encoder["default"].embedding.weight.shape == (P, 6 * 2 * 384 if projection_hidden is None else 384)


def test_copy_to_peft_rejects_another_size(classifier):
    from peft import PrefixTuningConfig, get_peft_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        theirs = get_peft_model(copy.deepcopy(classifier), PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=5))
    with pytest.raises(ValueError, match="num_virtual_tokens=4, prefix_projection=False"):
        copy_to_peft(PrefixEncoder(6, 12, 32, 4), theirs)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_padding_does_not_change_the_outputs(backbone, implementation):
    encoder, tokenizer = backbone
    model = apply_prefix(copy.deepcopy(encoder), 3)
    model.config._attn_implementation = implementation  # sdpa passes a boolean mask, eager an additive one
    padded = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        batch_hidden = model(**padded).last_hidden_state
        for i, text in enumerate(TEXTS):
            alone = tokenizer([text], return_tensors="pt")
            hidden = model(**alone).last_hidden_state[0]
            torch.testing.assert_close(batch_hidden[i, : len(hidden)], hidden, rtol=0, atol=1e-5)


def test_extend_attention_mask_attends_to_the_prefix():
    boolean = torch.tensor([[[[True, False]]]])
    assert extend_attention_mask(boolean, 2).tolist() == [[[[True, True, True, False]]]]
    additive = torch.tensor([[[[0.0, -1e9]]]])
    assert extend_attention_mask(additive, 1).tolist() == [[[[0.0, 0.0, -1e9]]]]
    assert extend_attention_mask(None, 3) is None
    with pytest.raises(ValueError, match="4D attention mask"):
        extend_attention_mask(torch.ones(2, 5), 3)


def test_training_moves_only_prefixes_and_heads(backbone):
    model = make_model(backbone)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"trunk.prefix_encoder.encoders.{t}.prefix" for t in CLASSES} | {
        f"heads.{t}.{w}" for t in CLASSES for w in ("weight", "bias")
    }
    frozen = {name: p.detach().clone() for name, p in model.trunk.encoder.named_parameters()}
    prefixes = {t: model.trunk.prefix_encoder.encoders[t].prefix.detach().clone() for t in CLASSES}
    heads = {t: model.heads[t].weight.detach().clone() for t in CLASSES}
    labels = {"sentiment": torch.tensor([0, 1, 2, 0]), "pos": torch.tensor([2, 3, 3, 2])}
    dataset = MultiTaskDataset({task: (TEXTS, labels[task]) for task in CLASSES})
    loader = multitask_loader(dataset, batch_size=4, mixed=True, seed=0)
    loss_fns = dict.fromkeys(CLASSES, nn.functional.cross_entropy)
    history = train(model, loader, loss_fns, num_steps=2, lr=1e-2, progress=False)
    assert len(history.steps) == 2
    for name, p in model.trunk.encoder.named_parameters():
        assert torch.equal(p, frozen[name]), f"backbone parameter {name} changed"
        assert p.grad is None, f"backbone parameter {name} got a gradient"
    for task in CLASSES:
        assert not torch.equal(model.trunk.prefix_encoder.encoders[task].prefix, prefixes[task])
        assert not torch.equal(model.heads[task].weight, heads[task])


def test_a_mixed_batch_equals_per_task_runs(backbone):
    model = make_model(backbone, projection_hidden=16)
    tasks = ["pos", "sentiment", "pos", "sentiment"]
    mixed = model(TEXTS, tasks)
    for task, (outputs, positions) in mixed.items():
        alone = model([TEXTS[i] for i in positions.tolist()], task)
        torch.testing.assert_close(outputs, alone, rtol=0, atol=1e-5)
    sum(out.outputs.sum() for out in mixed.values()).backward()
    for task in CLASSES:
        assert all(p.grad is not None for p in model.trunk.prefix_encoder.encoders[task].parameters())


def test_save_and_load_one_task_is_exact(backbone, tmp_path):
    model, other = make_model(backbone, seed=0), make_model(backbone, seed=1)
    with torch.no_grad():
        before = other(TEXTS, "sentiment")
        assert not torch.allclose(other(TEXTS, "pos"), model(TEXTS, "pos"))
    model.save_task("pos", tmp_path / "pos.safetensors")
    other.load_task("pos", tmp_path / "pos.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(other(TEXTS, "pos"), model(TEXTS, "pos"), rtol=0, atol=0)
        torch.testing.assert_close(other(TEXTS, "sentiment"), before, rtol=0, atol=0)  # the other task untouched
    assert set(model.task_state_dict("pos")) == {"prefix.prefix", "head.weight", "head.bias"}
    with pytest.raises(ValueError, match="other settings: num_virtual_tokens='3' in the file but '5' here"):
        MultiTaskPrefixModel(TextEncoderTrunk(copy.deepcopy(backbone[0]), backbone[1]), {"pos": nn.Linear(384, 4)},
                             num_virtual_tokens=5).load_task("pos", tmp_path / "pos.safetensors")
    with pytest.raises(ValueError, match="other settings: projection_hidden='None' in the file but '16' here"):
        make_model(backbone, projection_hidden=16).load_task("pos", tmp_path / "pos.safetensors")


def test_clear_errors(backbone):
    model = make_model(backbone)
    with pytest.raises(ValueError, match="unknown task 'sentimnet'; tasks are: sentiment, pos"):
        model(TEXTS, "sentimnet")
    with pytest.raises(ValueError, match="already has prefix attention layers"):
        apply_prefix(model.trunk.encoder, 3)
    with pytest.raises(RuntimeError, match="no task is active"):
        model.trunk(TEXTS)
    set_active_task(model, "pos")
    assert model.trunk(TEXTS).shape == (4, 384)
    with pytest.raises(ValueError, match="supports encoders only, without past_key_values"):
        model.trunk.encoder.encoder.layer[0].attention.self(torch.zeros(1, 4, 384), past_key_values=object())
    with pytest.raises(ValueError, match=r"found no BERT-style self-attention .* in this Sequential; "
                                         r"its nn.Linear layers \(1\) end with: 0"):
        apply_prefix(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="found no BERT-style self-attention .* in this Sequential"):
        MultiTaskPrefixModel(nn.Sequential(nn.Linear(2, 2)), {"pos": nn.Linear(2, 4)})
    with pytest.raises(ValueError, match=r"found no word embedding \(the nn.Embedding that get_input_embeddings\(\).*"
                                         r"in this Sequential"):
        PromptTunedEncoder(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="num_virtual_tokens must be an int >= 1"):
        PrefixEncoder(6, 12, 32, 0)


def test_reparameterised_prefixes_differ_per_position_and_collapse_to_direct(backbone):
    torch.manual_seed(0)
    encoder = PrefixEncoder(num_layers=6, num_heads=12, head_dim=32, num_virtual_tokens=5, projection_hidden=64)
    prefix = encoder.flat()
    assert prefix.shape == (5, 6 * 2 * 384)
    assert torch.cdist(prefix, prefix)[~torch.eye(5, dtype=torch.bool)].min() > 1e-3  # no two positions alike
    article_bug = encoder.transform(torch.zeros(5, 384))  # the article's MLP of a zero vector
    torch.testing.assert_close(article_bug, article_bug[:1].expand(5, -1))  # one prefix for every position
    direct = encoder.to_direct()
    torch.testing.assert_close(direct.flat(), prefix.detach(), rtol=0, atol=0)
    keys, values = direct(layer=2)
    assert keys.shape == values.shape == (1, 12, 5, 32)
    torch.testing.assert_close(keys[0, 3, 1], prefix[1, (2 * 2) * 384 + 3 * 32 : (2 * 2) * 384 + 4 * 32].detach())


@pytest.mark.parametrize("projection_hidden", [None, 512])
def test_parameter_count_formulas(backbone, projection_hidden):
    assert prefix_parameter_count(6, 384, 10) == 10 * 6 * 2 * 384
    encoder = PrefixEncoder(6, 12, 32, 10, projection_hidden)
    assert count_parameters(encoder) == prefix_parameter_count(6, 384, 10, projection_hidden)
    model = make_model(backbone, projection_hidden)
    head = 384 * 4 + 4
    assert model.task_parameter_count("pos") == prefix_parameter_count(6, 384, 3, projection_hidden) + head
    assert count_parameters(model, trainable_only=True) == sum(model.task_parameter_count(t) for t in CLASSES)


def test_prompt_tuning_equals_peft_prompt_tuning(backbone):
    from peft import PromptTuningConfig, get_peft_model

    encoder, tokenizer = backbone
    torch.manual_seed(0)
    ours = PromptTunedEncoder(copy.deepcopy(encoder), num_virtual_tokens=4)
    assert count_parameters(ours, trainable_only=True) == 4 * 384
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        theirs = get_peft_model(copy.deepcopy(encoder), PromptTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=4))
    with torch.no_grad():
        theirs.prompt_encoder["default"].embedding.weight.copy_(ours.prompt)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        mine = ours(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        reference = theirs(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert mine.shape == batch["input_ids"].shape + (384,)
    torch.testing.assert_close(mine, reference[:, 4:], rtol=0, atol=1e-5)


def test_a_deep_copy_has_its_own_prefixes():
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    torch.manual_seed(0)
    model = apply_prefix(BertModel(config).eval(), 2)
    twin = copy.deepcopy(model)
    input_ids = torch.randint(50, (1, 4))
    before = model(input_ids=input_ids).last_hidden_state
    with torch.no_grad():
        twin.prefix_encoder.prefix.add_(1.0)
    assert all(layer.attention.self.prefix_encoder is twin.prefix_encoder for layer in twin.encoder.layer)
    torch.testing.assert_close(model(input_ids=input_ids).last_hidden_state, before, rtol=0, atol=0)
    assert not torch.allclose(twin(input_ids=input_ids).last_hidden_state, before)


@pytest.mark.parametrize("projection_hidden", [None, 16])
def test_the_step_recorder_measures_each_tasks_prefix_move_and_changes_no_result(backbone, projection_hidden):
    def trained(record):
        model = make_model(backbone, projection_hidden).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        prefixes = model.trunk.prefix_encoder
        before = {t: prefixes.encoders[t].flat().detach().clone() for t in CLASSES}
        labels = {"sentiment": torch.tensor([0, 1, 2, 0]), "pos": torch.tensor([2, 3, 3, 2])}
        loader = multitask_loader(MultiTaskDataset({task: (TEXTS, labels[task]) for task in CLASSES}), 8, mixed=True, seed=0)
        recorder = PrefixStepRecorder(prefixes, optimizer)
        torch.manual_seed(5)   # dropout
        with recorder if record else contextlib.nullcontext():
            train(model, loader, dict.fromkeys(CLASSES, nn.functional.cross_entropy), 2, optimizer=optimizer, progress=False)
        return model, recorder, before

    model, recorder, before = trained(record=True)
    plain, _, _ = trained(record=False)
    for task in CLASSES:   # recording reads, never changes, the run
        torch.testing.assert_close(model.trunk.prefix_encoder.encoders[task].flat(),
                                   plain.trunk.prefix_encoder.encoders[task].flat(), rtol=0, atol=0)
        assert len(recorder.entry_rms[task]) == len(recorder.parameter_step[task]) == 2
        after = model.trunk.prefix_encoder.encoders[task].flat().detach()
        total = (after - before[task]).pow(2).mean().sqrt().item()
        assert 0 < total <= sum(recorder.entry_rms[task]) + 1e-6   # the steps add up to the whole move (triangle inequality)
        # Adam's first step moves every number with a gradient by lr · g / (|g| + eps) ≈ lr
        assert recorder.parameter_step[task][0] == pytest.approx(0.01, rel=0.05)
        start, end = recorder.mean_abs[task]
        assert start == pytest.approx(before[task].abs().mean().item()) and end == pytest.approx(after.abs().mean().item())
    if projection_hidden is None:   # direct: the prefix is the trained numbers, so both measures agree on step 1
        assert recorder.entry_rms["pos"][0] == pytest.approx(0.01, rel=0.05)
    summary = recorder.summary(digits=3)
    assert set(summary) == {"entry_rms", "parameter_step", "mean_abs"} and len(summary["mean_abs"]["pos"]) == 2
    with pytest.raises(TypeError, match="expected a PrefixEncoder or MultiTaskPrefixEncoder"):
        PrefixStepRecorder(model.trunk, torch.optim.Adam(model.parameters()))


def test_a_prefix_from_real_words_holds_the_texts_keys_and_values(backbone):
    encoder, tokenizer = backbone
    text = "the part of speech of a word from its dictionary gloss"
    captured = {}
    hooks = [module.register_forward_hook(lambda m, i, out, key=(l, kind): captured.__setitem__(key, out[0, :4]))
             for l, layer in enumerate(encoder.encoder.layer) for kind, module in
             [("key", layer.attention.self.key), ("value", layer.attention.self.value)]]
    with torch.no_grad():
        encoder(**tokenizer(text, return_tensors="pt"))
    for hook in hooks:
        hook.remove()
    for layers in (None, [4, 5]):
        flat = prefix_from_text(encoder, tokenizer, text, 4, layers)
        chosen = list(range(6)) if layers is None else layers
        assert flat.shape == (4, len(chosen) * 2 * 384)
        prefix = PrefixEncoder(len(chosen), 12, 32, 4)
        with torch.no_grad():
            prefix.prefix.copy_(flat)
            for i, l in enumerate(chosen):   # read back through the encoder's layout: layer i's keys and values
                keys, values = prefix(layer=i)
                torch.testing.assert_close(keys[0], captured[l, "key"].view(4, 12, 32).transpose(0, 1))
                torch.testing.assert_close(values[0], captured[l, "value"].view(4, 12, 32).transpose(0, 1))
    with pytest.raises(ValueError, match="the text has 3 tokens, fewer than the 4 virtual tokens"):
        prefix_from_text(encoder, tokenizer, "move", 4)
    with pytest.raises(ValueError, match="layers must be distinct increasing layer numbers from 0 to 5"):
        prefix_from_text(encoder, tokenizer, text, 4, [6])   # the same check as apply_prefix's


def test_prefixes_on_some_layers_only(backbone, tmp_path):
    encoder, tokenizer = backbone
    model = apply_prefix(copy.deepcopy(encoder), 3, layers=[4, 5])
    wrapped = [isinstance(layer.attention.self, PrefixSelfAttention) for layer in model.encoder.layer]
    assert wrapped == [False] * 4 + [True] * 2 and model.prefix_encoder.num_layers == 2
    assert [layer.attention.self.layer for layer in model.encoder.layer[4:]] == [0, 1]
    assert count_parameters(model, trainable_only=True) == prefix_parameter_count(2, 384, 3)
    for bad in ([6], [5, 4], [], [1, 1]):
        with pytest.raises(ValueError, match="layers must be distinct increasing layer numbers from 0 to 5"):
            apply_prefix(copy.deepcopy(encoder), 3, layers=bad)
    torch.manual_seed(0)
    heads = {task: nn.Linear(384, k) for task, k in CLASSES.items()}
    top = MultiTaskPrefixModel(TextEncoderTrunk(copy.deepcopy(encoder), tokenizer, 32), heads, 3, layers=[5]).eval()
    top.save_task("pos", tmp_path / "pos.safetensors")
    again = MultiTaskPrefixModel(TextEncoderTrunk(copy.deepcopy(encoder), tokenizer, 32), heads, 3, layers=[5]).eval()
    again.load_task("pos", tmp_path / "pos.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(again(TEXTS, "pos"), top(TEXTS, "pos"), rtol=0, atol=0)
    with pytest.raises(ValueError, match="layers='\\[5\\]' in the file but 'null' here"):
        make_model(backbone).load_task("pos", tmp_path / "pos.safetensors")


def test_a_trunk_can_number_its_tokens_as_peft_does(backbone):
    from mtl_tutorial.backbone import mean_pool

    encoder, tokenizer = backbone
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    length = batch["input_ids"].shape[1]
    with torch.no_grad():
        shifted = TextEncoderTrunk(encoder, tokenizer, 64, position_offset=3)(TEXTS)
        expected = mean_pool(encoder(**batch, position_ids=torch.arange(3, 3 + length)[None]).last_hidden_state,
                             batch["attention_mask"])
        torch.testing.assert_close(shifted, expected)
        assert not torch.allclose(shifted, TextEncoderTrunk(encoder, tokenizer, 64)(TEXTS), atol=1e-3)
    with pytest.raises(ValueError, match="position_offset must be an int >= 0, got -1"):
        TextEncoderTrunk(encoder, tokenizer, position_offset=-1)
