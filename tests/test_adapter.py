"""Bottleneck adapters on the shipped MiniLM: identity at init, what trains, routing, saving, errors."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtl_tutorial.adapter import (
    AdaptedLinear,
    AdaptersAfterEncoder,
    BottleneckAdapter,
    MultiTaskAdapterModel,
    MultiTaskBottleneckAdapter,
    adapter_layers,
    adapter_parameter_count,
    apply_adapters,
    transformer_layers,
)
from mtl_tutorial.backbone import count_parameters, load_backbone
from mtl_tutorial.models import TextEncoderTrunk

TEXTS = [
    "This medicine cured my headache within an hour.",
    "Terrible side effects, I stopped after two days.",
    "a small domesticated carnivorous mammal",
    "move fast by using one's feet",
    "It was fine, nothing special.",
]
NUM_CLASSES = {"sentiment": 3, "pos": 4}


@pytest.fixture(scope="module")
def backbone():
    return load_backbone()


def multitask_model(backbone, bottleneck_size=8, placement="houlsby", seed=0, activation="gelu"):
    encoder, tokenizer = backbone
    torch.manual_seed(seed)
    heads = {task: nn.Linear(384, n) for task, n in NUM_CLASSES.items()}
    trunk = TextEncoderTrunk(copy.deepcopy(encoder), tokenizer, max_length=32)
    return MultiTaskAdapterModel(trunk, heads, bottleneck_size=bottleneck_size, placement=placement, activation=activation)


def randomize_adapters(model, seed):
    """Nonzero up-projections, as after training."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".up." in name:
                parameter.normal_(std=0.05)


def test_bottleneck_adapter_is_the_identity_at_init_and_counts_its_parameters():
    torch.manual_seed(0)
    adapter = BottleneckAdapter(16, 4, activation="relu")
    h = torch.randn(2, 3, 16)
    assert torch.equal(adapter(h), h)
    assert count_parameters(adapter) == 2 * 16 * 4 + 4 + 16
    with torch.no_grad():
        adapter.up.weight.normal_()
    expected = h + adapter.up(torch.relu(adapter.down(h)))
    torch.testing.assert_close(adapter(h), expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hidden_size": 16, "bottleneck_size": 0}, "bottleneck_size must be an int >= 1, got 0"),
        ({"hidden_size": 16.0, "bottleneck_size": 4}, "hidden_size must be an int >= 1"),
        ({"hidden_size": 16, "bottleneck_size": 4, "activation": "swish"}, "activations are: gelu, relu, tanh"),
    ],
)
def test_bottleneck_adapter_rejects_bad_sizes_and_activations(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BottleneckAdapter(**kwargs)


def frozen_linear(module, x):
    """The frozen projection of a (possibly adapted) layer: W x + b, without any adapter."""
    linear = module.base if isinstance(module, AdaptedLinear) else module
    return F.linear(x, linear.weight, linear.bias)


def adapter_reference(adapter, h):
    """Houlsby's adapter written out: h + W_up relu(W_down h + b_down) + b_up."""
    return h + F.linear(F.relu(F.linear(h, adapter.down.weight, adapter.down.bias)), adapter.up.weight, adapter.up.bias)


def bert_layer_reference(layer, h, adapted, num_heads):
    """One BERT layer in eval mode, written out, with an adapter right after each projection in
    ``adapted`` and before that sub-layer's LayerNorm(x + residual):

        a = LayerNorm₁(adapter(W_o attention(h)) + h),   y = LayerNorm₂(adapter(W_2 gelu(W_1 a)) + a).
    """
    def projection(path, x):
        out = frozen_linear(layer.get_submodule(path), x)
        return adapter_reference(layer.get_submodule(path).adapter, out) if path in adapted else out

    attention = layer.attention.self
    batch, length, hidden = h.shape

    def heads(name):  # (B, L, hidden) -> (B, heads, L, d)
        return frozen_linear(getattr(attention, name), h).view(batch, length, num_heads, -1).transpose(1, 2)

    q, k, v = heads("query"), heads("key"), heads("value")
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hidden // num_heads), dim=-1)
    context = (weights @ v).transpose(1, 2).reshape(batch, length, hidden)
    a = layer.attention.output.LayerNorm(projection("attention.output.dense", context) + h)
    inner = F.gelu(frozen_linear(layer.intermediate.dense, a))
    return layer.output.LayerNorm(projection("output.dense", inner) + a)


@pytest.mark.parametrize(
    "placement, adapted",
    [("houlsby", {"attention.output.dense", "output.dense"}), ("pfeiffer", {"output.dense"})],
)
def test_adapters_sit_after_each_projection_before_the_residual_layernorm(placement, adapted):
    """A tiny random BERT, numerically against the layer written out: catches an adapter moved after
    the LayerNorm, before the projection, onto another projection, or missing."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    torch.manual_seed(0)
    plain = BertModel(config).eval()
    model = apply_adapters(copy.deepcopy(plain), bottleneck_size=4, placement=placement, activation="relu")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".adapter." in name:
                parameter.normal_(std=0.5)  # W_up starts at zero: without this every placement is the identity
    input_ids = torch.randint(50, (3, 7))
    with torch.no_grad():
        h = model.embeddings(input_ids=input_ids)
        for layer in model.encoder.layer:
            h = bert_layer_reference(layer, h, adapted, config.num_attention_heads)
        output = model(input_ids=input_ids).last_hidden_state
        assert not torch.allclose(output, plain(input_ids=input_ids).last_hidden_state, atol=1e-2)
    torch.testing.assert_close(output, h, rtol=0, atol=1e-5)


def test_injected_adapters_leave_the_backbone_unchanged_at_init(backbone):
    encoder, tokenizer = backbone
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    adapted = apply_adapters(copy.deepcopy(encoder), bottleneck_size=8)
    with torch.no_grad():
        torch.testing.assert_close(
            adapted(**batch).last_hidden_state, encoder(**batch).last_hidden_state, rtol=0, atol=1e-6
        )
    layers = adapter_layers(adapted)
    assert all(isinstance(layer, AdaptedLinear) for layer in layers.values())
    names = list(layers)
    assert len(names) == 12 and names[:2] == ["encoder.layer.0.attention.output.dense", "encoder.layer.0.output.dense"]


def test_only_adapters_and_heads_train_and_counts_match_the_formulas(backbone):
    backbone_size = count_parameters(backbone[0])
    for placement, per_layer in (("houlsby", 2), ("pfeiffer", 1)):
        model = multitask_model(backbone, bottleneck_size=8, placement=placement)
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        assert trainable and all(".adapters." in name or name.startswith("heads.") for name in trainable)
        one_set = adapter_parameter_count(6, 384, 8, placement)
        assert one_set == per_layer * 6 * (2 * 384 * 8 + 8 + 384)
        assert model.task_parameter_count("pos") == one_set + 384 * 4 + 4
        assert count_parameters(model, trainable_only=True) == 2 * one_set + (384 * 3 + 3) + (384 * 4 + 4)
        assert count_parameters(model) - count_parameters(model, trainable_only=True) == backbone_size


def test_one_training_step_reaches_every_layers_adapters(backbone):
    model = multitask_model(backbone).train()
    names = ["sentiment", "pos", "pos", "sentiment", "sentiment"]
    outputs = model(TEXTS, names)
    loss = sum(nn.functional.cross_entropy(out.outputs, torch.zeros(len(out.positions), dtype=torch.long))
               for out in outputs.values())
    loss.backward()
    for name, layer in adapter_layers(model.trunk).items():
        for task in NUM_CLASSES:
            # at init only W_up (and b_up) get a gradient: W_down's is W_upᵀ(...) = 0
            assert layer.adapter.adapters[task].up.weight.grad.abs().sum() > 0, (name, task)
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


def test_mixed_batch_equals_per_task_runs(backbone):
    model = multitask_model(backbone)
    randomize_adapters(model, seed=1)
    names = ["pos", "sentiment", "pos", "sentiment", "sentiment"]
    with torch.no_grad():
        mixed = model(TEXTS, names)
        for task, (outputs, positions) in mixed.items():
            torch.testing.assert_close(outputs, model([TEXTS[i] for i in positions.tolist()], task))
        model.set_active_task("pos")
        torch.testing.assert_close(model.heads["pos"](model.trunk(TEXTS)), model(TEXTS, "pos"))


def test_tasks_use_their_own_adapters(backbone):
    model = multitask_model(backbone)
    randomize_adapters(model, seed=1)
    with torch.no_grad():
        model.set_active_task("pos")
        pos_features = model.trunk(TEXTS)
        model.set_active_task("sentiment")
        assert not torch.allclose(model.trunk(TEXTS), pos_features)


def test_save_and_load_one_task_reproduces_its_logits_exactly(backbone, tmp_path):
    trained = multitask_model(backbone, seed=0)
    randomize_adapters(trained, seed=1)
    path = tmp_path / "sentiment.safetensors"
    trained.save_task("sentiment", path)
    # 4 bytes per float32 of the task's adapters and head, plus a small header; no backbone (~90 MB)
    assert 4 * trained.task_parameter_count("sentiment") < path.stat().st_size < 4 * trained.task_parameter_count("sentiment") + 20_000
    fresh = multitask_model(backbone, seed=2)
    randomize_adapters(fresh, seed=3)
    with torch.no_grad():
        pos_before = fresh(TEXTS, "pos")
        assert not torch.allclose(fresh(TEXTS, "sentiment"), trained(TEXTS, "sentiment"))
        fresh.load_task("sentiment", path)
        assert torch.equal(fresh(TEXTS, "sentiment"), trained(TEXTS, "sentiment"))
        assert torch.equal(fresh(TEXTS, "pos"), pos_before)
    with pytest.raises(ValueError, match="other settings: placement='houlsby' in the file but 'pfeiffer' here"):
        multitask_model(backbone, placement="pfeiffer").load_task("sentiment", path)
    with pytest.raises(ValueError, match="other settings: bottleneck_size='8' in the file but '16' here"):
        multitask_model(backbone, bottleneck_size=16).load_task("sentiment", path)
    relu = multitask_model(backbone, activation="relu")  # same names and shapes: only the metadata tells
    with pytest.raises(ValueError, match="other settings: activation='gelu' in the file but 'relu' here"):
        relu.load_task("sentiment", path)


def test_errors_a_learner_can_act_on(backbone):
    encoder, _ = backbone
    model = multitask_model(backbone)
    with pytest.raises(ValueError, match="already has 12 adapters.*copy.deepcopy"):
        apply_adapters(model.trunk)
    with pytest.raises(ValueError, match="unknown task 'sentimnet'; tasks are: sentiment, pos"):
        model(TEXTS[:1], "sentimnet")
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        model.set_active_task("nope")
    model.set_active_task(None)
    with pytest.raises(RuntimeError, match="no task is active"):
        model.trunk(TEXTS[:1])
    with pytest.raises(ValueError, match="placements are: houlsby, pfeiffer"):
        apply_adapters(copy.deepcopy(encoder), placement="parallel")
    with pytest.raises(ValueError, match="bottleneck_size must be an int >= 1"):
        apply_adapters(copy.deepcopy(encoder), bottleneck_size=0)
    with pytest.raises(ValueError, match="placements are"):
        adapter_parameter_count(6, 384, 8, placement="Houlsby")
    with pytest.raises(ValueError, match="found no BERT-like transformer layer .* in this Linear; it is a single nn.Linear"):
        apply_adapters(nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"found no BERT-like transformer layer .* in this Sequential; its nn.Linear "
                                         r"layers \(2\) end with: 0, 2 \(e.g. 0, 2\)"):
        MultiTaskAdapterModel(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4)), {"pos": nn.Linear(4, 2)})
    with pytest.raises(ValueError, match="task names must be unique"):
        MultiTaskBottleneckAdapter(["pos", "pos"], 16, 4)


def test_transformer_layers_finds_the_six_layers(backbone):
    layers = transformer_layers(backbone[0])
    assert list(layers) == [f"encoder.layer.{i}" for i in range(6)]


def test_adapters_after_the_encoder_leave_every_layer_unchanged(backbone):
    encoder, tokenizer = backbone
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    inside = apply_adapters(copy.deepcopy(encoder), bottleneck_size=8, placement="pfeiffer")
    after = AdaptersAfterEncoder(copy.deepcopy(encoder), bottleneck_size=8)
    assert count_parameters(after, trainable_only=True) == adapter_parameter_count(6, 384, 8, "pfeiffer")
    for model in (inside, after):
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if ".up." in name:
                    parameter.normal_(std=0.05)
    with torch.no_grad():
        plain = encoder(**batch, output_hidden_states=True).hidden_states
        changed_inside = inside(**batch, output_hidden_states=True).hidden_states
        output_after = after(**batch, output_hidden_states=True)
    assert torch.equal(changed_inside[0], plain[0])  # embeddings come before any adapter
    assert all(not torch.allclose(a, b) for a, b in zip(changed_inside[1:], plain[1:]))
    assert all(torch.equal(a, b) for a, b in zip(output_after.hidden_states, plain))  # no layer sees them
    assert not torch.allclose(output_after.last_hidden_state, plain[-1])
    with pytest.raises(AttributeError, match="output_dim"):
        encoder.encoder.layer[0].output_dim  # what the article's AdapterModel reads


def test_adapters_in_chosen_layers_only_and_the_choice_saved_with_the_task(tmp_path):
    import copy as copy_

    from mtl_tutorial.adapter import MultiTaskAdapterModel, adapter_layers, apply_adapters
    from mtl_tutorial.backbone import load_backbone
    from mtl_tutorial.models import TextEncoderTrunk

    backbone, tokenizer = load_backbone()
    top = apply_adapters(copy_.deepcopy(backbone), 8, "pfeiffer", layers=[3, 4, 5])
    assert sorted(adapter_layers(top)) == [f"encoder.layer.{i}.output.dense" for i in (3, 4, 5)]
    for bad in ([6], [], [1, 1], [-1], [True]):
        with pytest.raises(ValueError, match="distinct layer indices in 0..5"):
            apply_adapters(copy_.deepcopy(backbone), 8, layers=bad)
    heads = {"a": torch.nn.Linear(384, 2)}
    model = MultiTaskAdapterModel(TextEncoderTrunk(copy_.deepcopy(backbone), tokenizer, 16), heads, 8, layers=[5, 4])
    assert model.task_metadata()["layers"] == "4,5" and len(adapter_layers(model.trunk)) == 4
    model.save_task("a", tmp_path / "a.safetensors")
    everywhere = MultiTaskAdapterModel(TextEncoderTrunk(copy_.deepcopy(backbone), tokenizer, 16), heads, 8)
    with pytest.raises(ValueError, match="layers"):
        everywhere.load_task("a", tmp_path / "a.safetensors")
    assert MultiTaskAdapterModel.arguments_from_metadata(model.task_metadata())["layers"] == [4, 5]
