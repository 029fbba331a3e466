"""LoRA from scratch: the layer's math, injection, agreement with peft, and multi-task LoRA."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtl_tutorial.backbone import load_backbone, quiet_transformers
from mtl_tutorial.data.multitask import MultiTaskDataset, multitask_loader
from mtl_tutorial.lora import (
    LoRALinear,
    MultiTaskLoRALinear,
    MultiTaskLoRAModel,
    apply_lora,
    copy_to_peft,
    lora_layers,
    low_rank_errors,
    merge_and_unload,
    merge_lora,
    rank_tradeoff,
    unmerge_lora,
)
from mtl_tutorial.models import TextEncoderTrunk
from mtl_tutorial.multitask_peft import set_active_task, task_routing
from mtl_tutorial.training import train

TEXTS = [
    "This medicine stopped my headaches within a week.",
    "Terrible side effects, I had to stop after two days.",
    "A small carnivorous mammal that hunts at night.",
    "To move quickly on foot.",
    "It worked, but I gained weight.",
    "Of or relating to the sea.",
]
TASKS = {"sentiment": 3, "pos": 4}

# peft 0.21 calls a transformers method that transformers 5.23 marks as deprecated: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def backbone():
    return load_backbone()


@pytest.fixture(scope="module")
def batch(backbone):
    _, tokenizer = backbone
    return dict(tokenizer(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt"))


def randomize_lora(model, std=0.02, seed=0):
    """Nonzero B (and fresh A), so that ΔW = BA ≠ 0 and a comparison means something."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            for matrices in (layer.A, layer.B):
                for p in matrices.values() if isinstance(matrices, nn.ParameterDict) else [matrices]:
                    p.copy_(torch.randn(p.shape, generator=generator) * std)


def multitask_model(backbone, seed=0, r=4, alpha=8, target_modules=("query", "value")):
    encoder, tokenizer = backbone
    torch.manual_seed(seed)
    heads = {task: nn.Linear(encoder.config.hidden_size, n) for task, n in TASKS.items()}
    trunk = TextEncoderTrunk(copy.deepcopy(encoder), tokenizer, max_length=32)
    return MultiTaskLoRAModel(trunk, heads, target_modules, r=r, alpha=alpha)


def no_dropout(model):
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


# --- the layer -------------------------------------------------------------------------------


def test_lora_linear_shapes_init_and_identity_at_start():
    torch.manual_seed(0)
    base = nn.Linear(20, 12)
    layer = LoRALinear(base, r=4, alpha=8)
    assert layer.A.shape == (4, 20) and layer.B.shape == (12, 4)
    assert layer.scaling == 2.0
    assert torch.all(layer.B == 0)  # A's distribution: test_A_starts_uniform_on_plus_minus_one_over_sqrt_in_as_in_peft
    assert not base.weight.requires_grad and layer.A.requires_grad and layer.B.requires_grad
    x = torch.randn(3, 5, 20)
    assert torch.equal(layer(x), base(x))


def test_lora_linear_computes_base_plus_scaled_low_rank_update():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(20, 12), r=4, alpha=6)
    nn.init.normal_(layer.B)
    x = torch.randn(3, 20)
    expected = x @ (layer.base.weight + 6 / 4 * layer.B @ layer.A).T + layer.base.bias
    torch.testing.assert_close(layer(x), expected)


class OneLinear(nn.Module):
    """The smallest model peft can wrap: one nn.Linear named ``proj``, in 24 != out 10."""

    def __init__(self, in_features=24, out_features=10):
        super().__init__()
        self.proj = nn.Linear(in_features, out_features)

    def forward(self, x):
        return self.proj(x)


def peft_lora(model, tasks=("default",), **config):
    """peft's LoRA on a copy of ``model``, one adapter per name in ``tasks``."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(target_modules=["proj"], **config)
    peft_model = get_peft_model(copy.deepcopy(model), config, adapter_name=tasks[0])
    for task in tasks[1:]:
        peft_model.add_adapter(task, config)
    return peft_model


def uniform_law_checks(A, bound):
    """A looks like n i.i.d. draws of U(-bound, bound): support, spread and shape (n = A.numel() >= 10,000)."""
    n = A.numel()
    assert A.abs().max() <= bound
    assert A.abs().max() > 0.99 * bound  # P(no draw beyond 0.99 · bound) = 0.99^n < 1e-43
    assert A.mean().abs() < 0.05 * bound  # standard error bound / sqrt(3n) < 0.006 · bound
    assert A.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)  # standard error of the std < 0.5 %
    quantiles = torch.quantile(A.abs().flatten() / bound, torch.tensor([0.25, 0.5, 0.75]))
    torch.testing.assert_close(quantiles, torch.tensor([0.25, 0.5, 0.75]), atol=0.02, rtol=0)  # |A|/bound ~ U(0, 1)
    assert n >= 10_000


def test_A_starts_uniform_on_plus_minus_one_over_sqrt_in_as_in_peft():
    """kaiming_uniform(a=√5) is U(-1/√in, 1/√in), nn.Linear's and peft's init; zeros, a small normal, a
    bound from out_features or kaiming's default a=0 (bound √(6/in)) all fail these checks."""
    torch.manual_seed(0)
    model = OneLinear(256, 40)
    bound = 1 / math.sqrt(256)
    ours = LoRALinear(model.proj, r=64, alpha=8)
    uniform_law_checks(ours.A.detach(), bound)
    assert torch.all(ours.B == 0)
    theirs = peft_lora(model, r=64, lora_alpha=8).base_model.model.proj
    uniform_law_checks(theirs.lora_A["default"].weight.detach(), bound)  # peft draws from the same law
    assert torch.all(theirs.lora_B["default"].weight == 0)
    multi = MultiTaskLoRALinear(nn.Linear(256, 40), ["sentiment", "pos"], r=64, alpha=8)
    for task in multi.tasks:
        uniform_law_checks(multi.A[task].detach(), bound)
        assert torch.all(multi.B[task] == 0)
    assert not torch.equal(multi.A["sentiment"], multi.A["pos"])  # each task draws its own A


def test_dropout_acts_on_the_input_of_the_update_as_in_peft_in_training_mode():
    """y = base(x) + (α/r) B A dropout(x): with the same seed, peft's train-mode output to the last bits."""
    torch.manual_seed(0)
    model = OneLinear()
    ours = apply_lora(copy.deepcopy(model), ["proj"], r=4, alpha=8, dropout=0.3)
    randomize_lora(ours, std=0.3)
    theirs = peft_lora(model, r=4, lora_alpha=8, lora_dropout=0.3)
    copy_to_peft(ours, theirs)
    x = torch.randn(5, 24)
    ours.train(), theirs.train()
    torch.manual_seed(1)
    dropped = ours(x)
    torch.manual_seed(1)
    torch.testing.assert_close(dropped, theirs(x), rtol=0, atol=1e-6)
    with torch.no_grad():
        assert not torch.allclose(dropped, ours.eval()(x), atol=1e-3)  # dropout did drop something


def test_multitask_dropout_matches_peft_per_task_and_in_a_mixed_batch():
    """Single-task batches equal peft's adapter in training mode; in a mixed batch, the rows of task t
    equal peft's adapter t on the whole batch with the same seed (one dropout mask over the batch)."""
    torch.manual_seed(0)
    model, tasks = OneLinear(), ("sentiment", "pos")
    ours = apply_lora(copy.deepcopy(model), ["proj"], r=4, alpha=8, dropout=0.3, tasks=tasks)
    randomize_lora(ours, std=0.3)
    theirs = peft_lora(model, tasks, r=4, lora_alpha=8, lora_dropout=0.3)
    for task in tasks:
        copy_to_peft(ours, theirs, adapter_name=task, task=task)
    ours.train(), theirs.train()
    x = torch.randn(6, 24)
    names = ["pos", "sentiment", "pos", "pos", "sentiment", "sentiment"]
    torch.manual_seed(1)
    with task_routing(ours, names):
        mixed = ours(x)
    for task in tasks:
        theirs.set_adapter(task)
        torch.manual_seed(1)
        with task_routing(ours, task):
            alone = ours(x)
        torch.manual_seed(1)
        reference = theirs(x)
        torch.testing.assert_close(alone, reference, rtol=0, atol=1e-6)
        rows = [i for i, name in enumerate(names) if name == task]
        torch.testing.assert_close(mixed[rows], reference[rows], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"r": 0}, ValueError, "rank r must be an int >= 1"),
        ({"alpha": 0}, ValueError, "alpha must be a finite number > 0"),
        ({"dropout": 1.0}, ValueError, r"dropout must be in \[0, 1\)"),
        ({"base": nn.Conv1d(3, 3, 1)}, TypeError, "LoRA wraps an nn.Linear, got Conv1d"),
    ],
)
def test_lora_linear_validates_its_arguments(kwargs, error, message):
    arguments = {"base": nn.Linear(4, 4), "r": 2, "alpha": 4, "dropout": 0.0} | kwargs
    with pytest.raises(error, match=message):
        LoRALinear(**arguments)


def test_merge_unmerge_round_trip_and_no_double_counting():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(20, 12), r=4, alpha=8)
    nn.init.normal_(layer.B)
    w0, x = layer.base.weight.detach().clone(), torch.randn(3, 20)
    unmerged = layer(x)
    layer.merge()
    torch.testing.assert_close(layer.base.weight, w0 + layer.delta_weight(), atol=0, rtol=0)
    torch.testing.assert_close(layer(x), unmerged, atol=1e-5, rtol=0)  # the update is not added twice
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, w0, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), unmerged, atol=1e-5, rtol=0)
    with pytest.raises(RuntimeError, match="not merged"):
        layer.unmerge()


# --- injection into the shipped backbone ----------------------------------------------------


def test_zero_init_lora_leaves_the_backbone_outputs_unchanged(backbone, batch):
    encoder, _ = backbone
    wrapped = apply_lora(copy.deepcopy(encoder), ("query", "value"), r=8, alpha=16)
    assert len(lora_layers(wrapped)) == 2 * encoder.config.num_hidden_layers
    with torch.no_grad():
        assert torch.equal(wrapped(**batch).last_hidden_state, encoder(**batch).last_hidden_state)


def test_only_lora_parameters_train_after_apply_lora(backbone):
    wrapped = apply_lora(copy.deepcopy(backbone[0]), ("query", "value"), r=8, alpha=16)
    trainable = {name for name, p in wrapped.named_parameters() if p.requires_grad}
    assert trainable and all(name.endswith((".A", ".B")) for name in trainable)
    assert sum(p.numel() for name, p in wrapped.named_parameters() if name in trainable) == 12 * 8 * (384 + 384)


def test_matches_peft_lora_with_the_same_matrices_unmerged_and_merged(backbone, batch):
    from peft import LoraConfig, get_peft_model

    encoder, _ = backbone
    targets = ["query", "value", "output.dense"]
    ours = apply_lora(copy.deepcopy(encoder), targets, r=4, alpha=8)
    randomize_lora(ours)
    with quiet_transformers():
        theirs = get_peft_model(copy.deepcopy(encoder), LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    assert copy_to_peft(ours, theirs) == 3 * 6 + 6  # attention.output.dense and output.dense per layer
    ours.eval(), theirs.eval()
    with torch.no_grad():
        reference = theirs(**batch).last_hidden_state
        assert not torch.allclose(reference, encoder(**batch).last_hidden_state, atol=1e-3)  # ΔW ≠ 0
        torch.testing.assert_close(ours(**batch).last_hidden_state, reference, atol=1e-5, rtol=0)
        merge_lora(ours)
        theirs.merge_adapter()
        torch.testing.assert_close(ours(**batch).last_hidden_state, theirs(**batch).last_hidden_state, atol=1e-5, rtol=0)
        # merged vs unmerged: the same function, rounded differently across 24 layers
        torch.testing.assert_close(ours(**batch).last_hidden_state, reference, atol=1e-4, rtol=0)
        assert unmerge_lora(ours) == 24


def test_merge_and_unload_gives_the_plain_architecture_with_the_same_outputs(backbone, batch):
    encoder, _ = backbone
    ours = apply_lora(copy.deepcopy(encoder), ("query", "value"), r=4, alpha=8)
    randomize_lora(ours)
    with torch.no_grad():
        expected = ours(**batch).last_hidden_state
        plain = merge_and_unload(ours)
        assert not lora_layers(plain)
        assert type(plain.encoder.layer[0].attention.self.query) is nn.Linear
        torch.testing.assert_close(plain(**batch).last_hidden_state, expected, atol=1e-4, rtol=0)  # rounding


def test_a_pattern_matching_nothing_lists_the_linear_names(backbone):
    with pytest.raises(ValueError, match=r"no nn.Linear matching target module 'qurey'.* in this BertModel; "
                                         r"its nn.Linear layers \(37\) end with: dense, key, query, value"):
        apply_lora(copy.deepcopy(backbone[0]), ("qurey", "value"))


def test_no_target_at_all_is_an_error_not_a_model_with_nothing_to_train(backbone):
    with pytest.raises(ValueError, match=r"target_modules is empty.* in this BertModel; its nn.Linear layers \(37\) end with"):
        apply_lora(copy.deepcopy(backbone[0]), [])
    with pytest.raises(ValueError, match=r"target_modules is empty.* in this TextEncoderTrunk"):
        multitask_model(backbone, target_modules=[])
    with pytest.raises(ValueError, match=r"target module 'query'.* in this Sequential; it has no nn.Linear layer at all"):
        apply_lora(nn.Sequential(nn.ReLU()), ["query"])


def test_applying_lora_twice_is_an_error(backbone):
    wrapped = apply_lora(copy.deepcopy(backbone[0]))
    with pytest.raises(ValueError, match="already has 12 LoRA layers.*fresh copy"):
        apply_lora(wrapped)


# --- multi-task LoRA -------------------------------------------------------------------------


def test_multitask_model_trains_only_lora_and_heads_with_the_course_loop(backbone):
    model = multitask_model(backbone)
    randomize_lora(model)  # B ≠ 0, so A gets a gradient too
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("heads.") or ".A." in name or ".B." in name for name in trainable)
    assert model.task_parameter_count("sentiment") == 12 * 4 * (384 + 384) + 384 * 3 + 3
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    data = MultiTaskDataset({"sentiment": (TEXTS[:3], torch.tensor([2, 0, 1])), "pos": (TEXTS[3:], torch.tensor([3, 1, 0]))})
    loader = multitask_loader(data, batch_size=6, mixed=True, seed=0)
    history = train(model, loader, {task: F.cross_entropy for task in TASKS}, num_steps=1, lr=1e-2, progress=False)
    assert all(len(history.losses[task]) == 1 for task in TASKS)  # one mixed batch holds both tasks
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == trainable


def test_mixed_batch_equals_per_task_runs_in_training_mode(backbone):
    model = no_dropout(multitask_model(backbone)).train()
    randomize_lora(model)
    tasks = ["sentiment", "pos", "pos", "sentiment", "pos", "sentiment"]
    labels = torch.tensor([2, 3, 1, 0, 0, 1])
    routed = model(TEXTS, tasks)
    sum(F.cross_entropy(out, labels[positions]) for out, positions in routed.values()).backward()
    mixed_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    for task, (outputs, positions) in routed.items():
        alone = model([TEXTS[i] for i in positions], task)
        torch.testing.assert_close(outputs, alone, atol=1e-5, rtol=1e-4)
        F.cross_entropy(alone, labels[positions]).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(mixed_grads[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_each_task_has_its_own_lora_and_an_absent_task_gets_no_gradient(backbone):
    model = multitask_model(backbone)
    randomize_lora(model)
    a = model(TEXTS[:2], "sentiment")
    with torch.no_grad():
        model.heads["pos"].weight.copy_(torch.cat([model.heads["sentiment"].weight, torch.zeros(1, 384)]))
        model.heads["pos"].bias.copy_(torch.cat([model.heads["sentiment"].bias, torch.zeros(1)]))
    b = model(TEXTS[:2], "pos")[:, :3]  # same head weights, other task's LoRA: other features
    assert not torch.allclose(a, b, atol=1e-3)
    a.sum().backward()
    query = model.trunk.encoder.encoder.layer[0].attention.self.query
    assert isinstance(query, MultiTaskLoRALinear)
    assert query.A["sentiment"].grad is not None and query.A["pos"].grad is None


def test_mixed_batch_matches_peft_adapter_names_which_peft_refuses_in_training(backbone, batch):
    from peft import LoraConfig, get_peft_model

    ours = multitask_model(backbone).eval()
    randomize_lora(ours)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"])
    with quiet_transformers():
        theirs = get_peft_model(copy.deepcopy(backbone[0]), config, adapter_name="sentiment")
        theirs.add_adapter("pos", config)
    with pytest.raises(ValueError, match="pass task= one of: sentiment, pos"):
        copy_to_peft(ours.trunk.encoder, theirs, adapter_name="pos")
    for task in TASKS:
        assert copy_to_peft(ours.trunk.encoder, theirs, adapter_name=task, task=task) == 12
    tasks = ["sentiment", "pos", "pos", "sentiment", "pos", "sentiment"]
    theirs.eval()
    with torch.no_grad(), task_routing(ours, tasks):
        reference = theirs(**batch, adapter_names=tasks).last_hidden_state
        torch.testing.assert_close(ours.trunk.encoder(**batch).last_hidden_state, reference, atol=1e-5, rtol=0)
    theirs.train()
    with pytest.raises(ValueError, match="Cannot pass `adapter_names` when the model is in training mode"):
        theirs(**batch, adapter_names=tasks)


def test_unknown_and_missing_tasks_are_errors_naming_the_tasks(backbone):
    model = multitask_model(backbone)
    with pytest.raises(ValueError, match="unknown task 'sentimnet'; tasks are: sentiment, pos"):
        model(TEXTS[:2], "sentimnet")
    with pytest.raises(ValueError, match="unknown task 'pso'; tasks are: sentiment, pos"):
        model(TEXTS[:2], ["sentiment", "pso"])
    with pytest.raises(ValueError, match="unknown task 'x'; tasks are: sentiment, pos"):
        model.set_active_task("x")
    with pytest.raises(RuntimeError, match="no task is active"):
        model.trunk(TEXTS[:2])  # the trunk alone, without a task
    model.set_active_task("pos")
    torch.testing.assert_close(model.heads["pos"](model.trunk(TEXTS[:2])), model(TEXTS[:2], "pos"))
    set_active_task(model, None)
    with pytest.raises(ValueError, match="has no multi-task PEFT layers"):
        set_active_task(nn.Linear(2, 2), "pos")


def test_save_and_load_one_task_reproduces_its_logits_exactly(backbone, tmp_path):
    trained = multitask_model(backbone, seed=0)
    randomize_lora(trained, seed=1)
    path = tmp_path / "sentiment.safetensors"
    trained.save_task("sentiment", path)
    assert path.stat().st_size < 200_000  # LoRA pairs and a head, no backbone (~90 MB)
    fresh = multitask_model(backbone, seed=2)
    randomize_lora(fresh, seed=3)
    with torch.no_grad():
        assert not torch.allclose(fresh(TEXTS, "sentiment"), trained(TEXTS, "sentiment"))
        fresh.load_task("sentiment", path)
        assert torch.equal(fresh(TEXTS, "sentiment"), trained(TEXTS, "sentiment"))
    with pytest.raises(ValueError, match=r"saved by a model with other settings: r='4' in the file but '2' here"):
        multitask_model(backbone, r=2).load_task("sentiment", path)  # another rank
    with pytest.raises(ValueError, match=r"alpha='8' in the file but '16' here"):
        multitask_model(backbone, alpha=16).load_task("sentiment", path)  # same shapes, another scaling α/r
    with pytest.raises(ValueError, match=r"target_modules='query,value' in the file but 'query,key' here"):
        multitask_model(backbone, target_modules=("query", "key")).load_task("sentiment", path)
    with pytest.raises(ValueError, match=r"head.weight has shape \(3, 384\) in .* but \(4, 384\) here"):
        fresh.load_task("pos", path)  # the pos head has 4 classes, not 3: its keys match, shapes not


# --- why low rank ----------------------------------------------------------------------------


def test_low_rank_errors_follow_eckart_young():
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    delta = u[:, :4] @ torch.diag(torch.tensor([4.0, 2.0, 1.0, 0.0], dtype=torch.float64)) @ v.T  # (6, 4), rank 3
    errors = low_rank_errors(delta)
    expected = torch.tensor([21.0, 5.0, 1.0, 0.0, 0.0], dtype=torch.float64).sqrt() / math.sqrt(21.0)
    torch.testing.assert_close(errors, expected)
    best_rank_1 = 4.0 * u[:, :1] @ v[:, :1].T
    assert (delta - best_rank_1).norm() / delta.norm() == pytest.approx(errors[1].item())
    with pytest.raises(ValueError, match="delta_weight is zero"):
        low_rank_errors(torch.zeros(3, 3))


def test_rank_tradeoff_counts_parameters_and_reads_well():
    delta = torch.outer(torch.arange(1.0, 7.0), torch.ones(4))  # (6, 4), rank 1
    tradeoff = rank_tradeoff(delta, 1)
    assert (tradeoff.lora_parameters, tradeoff.full_parameters) == (10, 24)
    assert tradeoff.relative_error == pytest.approx(0.0, abs=1e-12)
    assert repr(tradeoff).startswith("rank r = 1: LoRA trains 10 of 24 numbers (41.67%); relative error")
    with pytest.raises(ValueError, match="r must be between 1 and 4, got 5"):
        rank_tradeoff(delta, 5)
