"""Soft sharing models: penalty value, cross-stitch limits, MMoE/PLE gates, routing and training."""

import pytest
import torch
from torch import nn

from mtl_tutorial.data import MultiTaskDataset, multitask_loader
from mtl_tutorial.models import HardSharingModel, mlp
from mtl_tutorial.sharing import (
    CrossStitchNetwork,
    ExtractionLevel,
    MixtureOfExpertsTrunk,
    MultiGateMixtureOfExperts,
    ProgressiveLayeredExtraction,
    SoftSharingPenalty,
    SoftSharingTowers,
    alpha_metric_name,
    cross_stitch_init,
    extraction_levels,
    gate_metrics,
)
from mtl_tutorial.training import train

TASKS = ["a", "b", "c"]


def layer(fan_in, fan_out):
    return mlp(fan_in, fan_out, activation=nn.Tanh)  # tanh: no dead units in these tiny layers


def heads(width, tasks=TASKS):
    return {task: nn.Linear(width, 2 + k) for k, task in enumerate(tasks)}


def towers_model(shared=None):
    torch.manual_seed(0)
    return SoftSharingTowers({t: layer(4, 3) for t in TASKS}, heads(3), shared=shared)


def cross_stitch(alphas=None, tasks=TASKS):
    torch.manual_seed(0)
    columns = {t: [layer(4, 3), layer(3, 2)] for t in tasks}
    return CrossStitchNetwork(columns, heads(2, tasks), alphas=alphas)


def mmoe(num_experts=3):
    torch.manual_seed(0)
    return MultiGateMixtureOfExperts([layer(4, 3) for _ in range(num_experts)], heads(3), gate_input_dim=4)


def ple(widths=(3, 2)):
    torch.manual_seed(0)
    return ProgressiveLayeredExtraction(extraction_levels(TASKS, 4, list(widths), 1, 2, expert=layer), heads(widths[-1]))


# --- penalty ---------------------------------------------------------------------------------------


def test_penalty_is_the_sum_over_pairs_s_below_t_of_squared_distances():
    model = towers_model()
    towers = model.trunk.towers
    with torch.no_grad():  # tower t: every weight = t + 1, every bias = 0, so ‖θ_s − θ_t‖² = 12 (t − s)²
        for k, task in enumerate(TASKS):
            towers[task][0].weight.fill_(k + 1.0)
            towers[task][0].bias.zero_()
    # pairs (a,b), (a,c), (b,c): 12·(1 + 4 + 1) = 72; all ordered pairs would give 144, neighbours only 24
    assert model.penalty().item() == pytest.approx(72.0)


def test_penalty_over_chosen_layers_only_and_its_gradient():
    model = towers_model(shared=["0.bias"])
    towers = model.trunk.towers
    with torch.no_grad():
        for k, task in enumerate(TASKS):
            towers[task][0].bias.fill_(float(k))
    assert model.penalty().item() == pytest.approx(3 * (1 + 4 + 1))  # 3 biases per tower
    model.penalty().backward()
    # d/dθ_a Σ_{s<t} ‖θ_s − θ_t‖² = 2(θ_a − θ_b) + 2(θ_a − θ_c) = 2(0 − 1) + 2(0 − 2) = −6
    torch.testing.assert_close(towers["a"][0].bias.grad, torch.full((3,), -6.0))
    assert towers["a"][0].weight.grad is None


def test_penalty_weighting_adds_rho_times_penalty_and_reports_the_inner_weights():
    model = towers_model()
    losses = {"a": torch.tensor(1.0), "c": torch.tensor(2.0)}
    total, weights = SoftSharingPenalty(0.5)(losses, step=1, model=model)
    assert total.item() == pytest.approx(3.0 + 0.5 * model.penalty().item())
    assert weights == {"a": 1.0, "c": 1.0}
    total, weights = SoftSharingPenalty(0.0, {"a": 2.0, "b": 1.0, "c": 3.0})(losses, model=model)
    assert total.item() == pytest.approx(8.0) and weights == {"a": 2.0, "c": 3.0}


def test_penalty_errors_say_what_to_do():
    with pytest.raises(ValueError, match="rho .* must be finite and >= 0"):
        SoftSharingPenalty(-1.0)
    with pytest.raises(ValueError, match="needs the model, with a penalty"):
        SoftSharingPenalty(1.0)({"a": torch.tensor(1.0)}, model=nn.Linear(2, 2))
    aggregator = type("Aggregator", (), {"writes_gradients": True})()
    with pytest.raises(ValueError, match="writes the gradients itself"):
        SoftSharingPenalty(1.0, aggregator)
    with pytest.raises(ValueError, match=r"shared names \['1.weight'\] match no tower parameter"):
        towers_model(shared=["1.weight"])
    with pytest.raises(ValueError, match="same architecture"):
        SoftSharingTowers({"a": layer(4, 3), "b": layer(4, 5)}, {"a": nn.Linear(3, 1), "b": nn.Linear(5, 1)})
    with pytest.raises(ValueError, match="give both for the same tasks"):
        SoftSharingTowers({"a": layer(4, 3)}, {"b": nn.Linear(3, 1)})


def test_towers_are_independent_models():
    model = towers_model()
    x = torch.randn(5, 4)
    torch.testing.assert_close(model(x, "b"), model.heads["b"].head(model.trunk.towers["b"](x)))


# --- cross-stitch ----------------------------------------------------------------------------------


def test_cross_stitch_with_identity_alpha_equals_independent_columns():
    model = cross_stitch(alphas=[torch.eye(3), torch.eye(3)])
    x = torch.randn(5, 4)
    columns = model.trunk.layers
    for k, task in enumerate(TASKS):
        alone = columns[1][k](columns[0][k](x))
        torch.testing.assert_close(model(x, task), model.heads[task].head(alone))


def test_cross_stitch_with_uniform_alpha_averages_the_columns_after_every_layer():
    uniform = torch.full((3, 3), 1 / 3)
    model = cross_stitch(alphas=[uniform, uniform])
    x = torch.randn(5, 4)
    layers = model.trunk.layers
    first = torch.stack([layers[0][k](x) for k in range(3)]).mean(0)
    second = torch.stack([layers[1][k](first) for k in range(3)]).mean(0)
    features = model.trunk(x)
    for k in range(3):
        torch.testing.assert_close(features[:, k], second)


def test_cross_stitch_row_t_of_alpha_mixes_the_columns_into_task_t():
    alpha = torch.tensor([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]])  # not symmetric
    model = cross_stitch(alphas=[alpha, torch.eye(3)])
    x = torch.randn(5, 4)
    layers = model.trunk.layers
    h = [layers[0][k](x) for k in range(3)]
    mixed_a = 0.7 * h[0] + 0.2 * h[1] + 0.1 * h[2]  # h̃_a = Σ_s α_as h_s (the transpose would give 0.7, 0, 0.5)
    torch.testing.assert_close(model.trunk(x)[:, 0], layers[1][0](mixed_a))


def test_cross_stitch_init_alpha_metrics_and_shape_errors():
    torch.testing.assert_close(cross_stitch_init(2), torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
    torch.testing.assert_close(cross_stitch_init(3).sum(1), torch.ones(3))
    model = cross_stitch()
    assert model.alpha_values().shape == (2, 3, 3)
    metrics = model.alpha_metrics()
    assert len(metrics) == 18 and metrics[alpha_metric_name(1, "a", "a")] == pytest.approx(0.9)
    assert metrics[alpha_metric_name(0, "b", "c")] == pytest.approx(0.05)
    with pytest.raises(ValueError, match=r"α of layer 0 has shape \(2, 2\); with 3 tasks .* must be \(3, 3\)"):
        cross_stitch(alphas=[torch.eye(2), torch.eye(2)])
    with pytest.raises(ValueError, match="got 1 α matrices for 2 layers"):
        cross_stitch(alphas=[torch.eye(3)])
    with pytest.raises(ValueError, match="same number"):
        CrossStitchNetwork({"a": [layer(4, 3)], "b": [layer(4, 3), layer(3, 3)]}, heads(3, ["a", "b"]))
    with pytest.raises(ValueError, match="same width H"):
        CrossStitchNetwork({"a": [layer(4, 3)], "b": [layer(4, 2)]}, heads(3, ["a", "b"]))(torch.randn(2, 4), "a")


# --- MMoE and PLE ----------------------------------------------------------------------------------


def test_mmoe_gates_sum_to_one_per_example_over_the_experts():
    x = torch.randn(7, 4)  # 7 examples, 3 experts: a softmax over the batch would not sum to 1 per row
    gates = mmoe().gate_weights(x)
    assert gates.shape == (7, 3, 3)
    torch.testing.assert_close(gates.sum(-1), torch.ones(7, 3))
    assert (gates > 0).all()


def test_mmoe_output_is_the_gate_weighted_sum_of_the_experts():
    model = mmoe()
    x = torch.randn(5, 4)
    gates = model.gate_weights(x)
    experts = torch.stack([expert(x) for expert in model.trunk.experts], dim=1)  # (B, E, H)
    expected = (gates[:, 1, :, None] * experts).sum(1)  # task b
    torch.testing.assert_close(model(x, "b"), model.heads["b"].head(expected))


def test_mmoe_with_one_expert_is_hard_sharing_with_that_expert_as_trunk():
    model = mmoe(num_experts=1)
    hard = HardSharingModel(model.trunk.experts[0], {t: model.heads[t].head for t in TASKS})
    x = torch.randn(6, 4)
    names = ["a", "c", "b", "a", "c", "c"]
    for task, (outputs, positions) in model(x, names).items():
        torch.testing.assert_close(outputs, hard(x[positions], task))


def test_mmoe_errors():
    with pytest.raises(ValueError, match=r"at least one expert \(E >= 1\)"):
        MultiGateMixtureOfExperts([], heads(3), gate_input_dim=4)
    with pytest.raises(ValueError, match="take inputs of width 4, got \\(2, 5\\)"):
        mmoe()(torch.randn(2, 5), "a")
    with pytest.raises(ValueError, match="unknown task 'd'; tasks are: a, b, c"):
        mmoe()(torch.randn(2, 4), "d")


def test_ple_gates_see_only_their_own_and_the_shared_experts():
    model = ple()
    x = torch.randn(5, 4)
    assert model.expert_names() == ["a expert 1", "b expert 1", "c expert 1", "shared expert 1", "shared expert 2"]
    for level in (0, -1):
        gates = model.gate_weights(x, level)
        assert gates.shape == (5, 3, 5)
        torch.testing.assert_close(gates.sum(-1), torch.ones(5, 3))
        assert (gates[:, 0, 1:3] == 0).all() and (gates[:, 1, [0, 2]] == 0).all()
        assert (gates[:, 0, [0, 3, 4]] > 0).all()


def test_cgc_task_output_is_its_gate_over_own_and_shared_experts():
    model = ple(widths=(3,))
    level = model.trunk.levels[0]
    x = torch.randn(5, 4)
    experts = torch.stack([level.task_experts["c"][0](x), level.shared_experts[0](x), level.shared_experts[1](x)], 1)
    gate = level.gates["c"](x).softmax(-1)
    expected = (gate[:, :, None] * experts).sum(1)
    torch.testing.assert_close(model(x, "c"), model.heads["c"].head(expected))


def test_ple_second_level_reads_the_shared_gate_over_all_experts():
    model = ple()
    first, second = model.trunk.levels
    x = torch.randn(5, 4)
    outs = [first.task_experts[t][0](x) for t in TASKS] + [e(x) for e in first.shared_experts]
    shared = (first.shared_gate(x).softmax(-1)[:, :, None] * torch.stack(outs, 1)).sum(1)
    task_a = (first.gates["a"](x).softmax(-1)[:, :, None] * torch.stack([outs[0], outs[3], outs[4]], 1)).sum(1)
    experts = torch.stack([second.task_experts["a"][0](task_a)] + [e(shared) for e in second.shared_experts], 1)
    expected = (second.gates["a"](task_a).softmax(-1)[:, :, None] * experts).sum(1)
    torch.testing.assert_close(model(x, "a"), model.heads["a"].head(expected))
    assert second.shared_gate is None


def test_ple_errors():
    with pytest.raises(ValueError, match="needs a shared gate"):
        ProgressiveLayeredExtraction([ExtractionLevel({"a": [layer(4, 3)]}, [], 4, shared_gate=False)] * 2,
                                     {"a": nn.Linear(3, 1)})
    with pytest.raises(ValueError, match="has no expert to gate over"):
        ExtractionLevel({"a": []}, [], 4, shared_gate=False)
    with pytest.raises(ValueError, match="one expert width per level"):
        extraction_levels(TASKS, 4, [])


def test_gate_metrics_average_the_gates_over_inputs():
    model = mmoe()
    x = torch.randn(9, 4)
    metrics = gate_metrics(model, x)
    assert len(metrics) == 9
    assert metrics["gate/b/expert 2"] == pytest.approx(model.gate_weights(x)[:, 1, 1].mean().item(), abs=1e-6)
    assert sum(metrics[f"gate/a/expert {e}"] for e in (1, 2, 3)) == pytest.approx(1.0)


# --- every model: routing and one training step ----------------------------------------------------


MODELS = {"towers": towers_model, "cross-stitch": cross_stitch, "MMoE": mmoe, "PLE": ple}


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_mixed_batch_routing_equals_per_task_forwards(make):
    model = make()
    x = torch.randn(7, 4)
    names = ["b", "a", "b", "c", "a", "a", "b"]
    routed = model(x, names)
    assert list(routed) == ["b", "a", "c"] and model.tasks == tuple(TASKS)
    for task, (outputs, positions) in routed.items():
        assert outputs.shape == (len(positions), 2 + TASKS.index(task))
        torch.testing.assert_close(outputs, model(x[positions], task))
    with pytest.raises(TypeError, match="map task ids to names"):
        model(x, torch.zeros(7, dtype=torch.long))


@pytest.mark.parametrize("name", MODELS)
def test_every_model_trains_a_step_through_train_with_mixed_batches(name):
    model = MODELS[name]()
    torch.manual_seed(1)
    data = {t: (torch.randn(12, 4), torch.randint(0, 2 + k, (12,))) for k, t in enumerate(TASKS)}
    losses = dict.fromkeys(TASKS, nn.functional.cross_entropy)
    loader = multitask_loader(MultiTaskDataset(data), batch_size=12, mixed=True)
    before = [p.detach().clone() for p in model.parameters()]
    weighting = SoftSharingPenalty(0.1) if name == "towers" else None
    history = train(model, loader, losses, num_steps=2, weighting=weighting, progress=False)
    assert len(history.steps) == 2 and all(len(v) == 2 for v in history.losses.values())
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


# --- inputs the models cannot serve: a clear error where they enter -------------------------------


def two_columns(**kwargs):
    return CrossStitchNetwork({t: [layer(4, 3)] for t in "ab"}, heads(3, ["a", "b"]), **kwargs)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: towers_model(shared=[]), ValueError, "shared is empty, so the penalty would tie nothing"),
        (lambda: towers_model(shared=[0]), TypeError, r"shared must be a list of parameter names \(strings\)"),
        (lambda: SoftSharingTowers([layer(4, 3)], heads(3)),
         TypeError, "towers must be a dict task -> module, got list"),
        (lambda: SoftSharingTowers({}, {}), ValueError, "towers is empty"),
        (lambda: SoftSharingPenalty(True), TypeError, r"rho \(the penalty strength ρ\) must be a number, got bool"),
        (lambda: SoftSharingPenalty(torch.tensor(0.5)), TypeError, "must be a number, got Tensor"),
        (lambda: SoftSharingPenalty(float("nan")), ValueError, "must be finite and >= 0, got nan"),
        (lambda: SoftSharingPenalty(0.1, "uniform"), TypeError, "weighting must be None .* got str 'uniform'"),
        (lambda: SoftSharingPenalty(0.1, {"a": float("nan")}), ValueError, "static task weights λ_t must be finite"),
        (lambda: SoftSharingPenalty(0.1, {"a": True}), ValueError, "static task weights λ_t must be finite"),
        (lambda: SoftSharingPenalty(0.1, {"a": 1.0})({"a": torch.tensor(1.0), "b": torch.tensor(2.0)}, model=towers_model()),
         ValueError, "no static weight for task\\(s\\) 'b'; the weights are given for a"),
    ],
)
def test_penalty_inputs_it_cannot_serve(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: two_columns(self_weight=float("nan")),
         ValueError, r"self_weight \(the diagonal of α\) must be in \[0, 1\], got nan"),
        (lambda: two_columns(self_weight=1.5), ValueError, r"must be in \[0, 1\], got 1.5"),
        (lambda: two_columns(self_weight="0.9"), TypeError, "self_weight must be a number"),
        (lambda: cross_stitch_init(2.0),
         TypeError, r"num_tasks \(cross-stitch mixes at least 2 task columns\) must be an int"),
        (lambda: cross_stitch_init(1), ValueError, "at least 2 task columns.* must be >= 2, got 1"),
        (lambda: CrossStitchNetwork({}, {}), ValueError, "columns is empty"),
        (lambda: CrossStitchNetwork({"a": [layer(4, 3)]}, heads(3, ["a"]), alphas=[torch.eye(1)]), ValueError,
         "at least 2 task columns, got 1: a"),
        (lambda: CrossStitchNetwork({t: layer(4, 3) for t in "ab"}, heads(3, ["a", "b"])), TypeError,
         "column 'a' must be a list of modules, got a Sequential"),
        (lambda: CrossStitchNetwork({t: [layer(4, 3), "relu"] for t in "ab"}, heads(3, ["a", "b"])), TypeError,
         "column 'a' must hold nn.Module objects, got a str"),
        (lambda: two_columns(alphas=[torch.full((2, 2), float("nan"))]),
         ValueError, "α of layer 0 has nan or inf entries"),
        (lambda: two_columns(alphas=torch.eye(2)),
         TypeError, r"alphas must be a list of \(T, T\) tensors.*got shape \(2, 2\); .*\[alpha\]"),
        (lambda: two_columns(alphas=0.5), TypeError, "alphas must be a list of .* got float"),
    ],
)
def test_cross_stitch_inputs_it_cannot_serve(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_cross_stitch_alphas_follow_the_dtype_they_are_given_and_used_with():
    alpha = torch.tensor([[0.9 + 1e-12, 0.1], [0.3, 0.7]], dtype=torch.float64)
    model = two_columns(alphas=[alpha])
    assert model.trunk.alphas[0].dtype == torch.float64 and torch.equal(model.trunk.alphas[0].detach(), alpha)  # not rounded
    x = torch.randn(5, 4)
    assert model(x, "a").dtype == torch.float32  # mixed in the float32 columns' dtype
    assert two_columns(alphas=[[[1, 0], [0, 1]]]).trunk.alphas[0].dtype == torch.float32  # ints: the columns' dtype
    torch.manual_seed(0)
    double = CrossStitchNetwork({t: [layer(4, 3).double()] for t in "ab"}, {t: nn.Linear(3, 2).double() for t in "ab"})
    assert double.trunk.alphas[0].dtype == torch.float64
    x64 = x.double()
    h = torch.stack([column(x64) for column in double.trunk.layers[0]], dim=1)
    expected = double.heads["b"].head(0.1 * h[:, 0] + 0.9 * h[:, 1])
    torch.testing.assert_close(double(x64, "b"), expected)
    double(x64, "a").sum().backward()
    assert double.trunk.alphas[0].grad.dtype == torch.float64


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: MultiGateMixtureOfExperts(layer(4, 3), heads(3), 4),
         TypeError, "experts must be a list of modules, got a Sequential"),
        (lambda: MultiGateMixtureOfExperts(nn.Linear(4, 3), heads(3), 4),
         TypeError, "experts must be a list of modules, got a Linear"),
        (lambda: MultiGateMixtureOfExperts([layer(4, 3)], [nn.Linear(3, 2)], 4),
         TypeError, "heads must be a dict task -> module"),
        (lambda: MultiGateMixtureOfExperts([layer(4, 3)], heads(3), 0),
         ValueError, r"gate_input_dim \(the width D of the inputs\) must be >= 1, got 0"),
        (lambda: MultiGateMixtureOfExperts([layer(1, 3)], heads(3), True),
         TypeError, "gate_input_dim .* must be an int >= 1, got bool"),
        (lambda: MultiGateMixtureOfExperts([layer(4, 3)], heads(3), 4.0), TypeError, "must be an int >= 1, got float"),
        (lambda: mmoe()(torch.randn(4), "a"),
         ValueError, r"take a batch of inputs \(B, 4\), got shape \(4,\); .*x.unsqueeze\(0\)"),
        (lambda: mmoe().gate_weights([[0.0] * 4]), ValueError, "take inputs of width 4, got list"),
        (lambda: MixtureOfExpertsTrunk([layer(4, 3)], "ab", 4),
         TypeError, "tasks must be a list of task names, got str 'ab'"),
        (lambda: MixtureOfExpertsTrunk([layer(4, 3)], ["a", "a"], 4), ValueError, "tasks must be distinct"),
        (lambda: MixtureOfExpertsTrunk([layer(4, 3)], [], 4), ValueError, "tasks must be a non-empty list"),
        (lambda: gate_metrics(cross_stitch(), torch.randn(2, 4)),
         TypeError, r"gate_metrics reads the gates of .*use model.alpha_metrics\(\)"),
    ],
)
def test_mmoe_inputs_it_cannot_serve(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: extraction_levels(TASKS, 4, [3], num_task_experts=-1),
         ValueError, "num_task_experts must be >= 0, got -1"),
        (lambda: extraction_levels(TASKS, 4, [3], num_shared_experts=1.5),
         TypeError, "num_shared_experts must be an int >= 0, got float"),
        (lambda: extraction_levels(TASKS, 4, [3], 0, 0),
         ValueError, "num_task_experts \\+ num_shared_experts must be >= 1"),
        (lambda: extraction_levels(TASKS, 4, 16), TypeError, r"widths must be a list .* e.g. \[16\] for CGC"),
        (lambda: extraction_levels(TASKS, 4, [0]), ValueError, "every width in widths must be >= 1, got 0"),
        (lambda: extraction_levels("abc", 4, [3]), TypeError, "tasks must be a list of task names, got str 'abc'"),
        (lambda: extraction_levels(["a", "a"], 4, [3]), ValueError, "tasks must be distinct"),
        (lambda: extraction_levels(TASKS, True, [3]), TypeError, "input_dim must be an int >= 1, got bool"),
        (lambda: extraction_levels(TASKS, 4, [3], expert="mlp"),
         TypeError, r"expert must be a function \(fan_in, width\)"),
        (lambda: ExtractionLevel({}, [layer(4, 3)], 4, shared_gate=False), ValueError, "task_experts is empty"),
        (lambda: ExtractionLevel({"a": layer(4, 3)}, [], 4, shared_gate=False),
         TypeError, "the experts of task 'a' must be a list"),
        (lambda: ExtractionLevel({"a": [layer(4, 3)]}, [], 4, shared_gate="no"),
         TypeError, "shared_gate must be True or False"),
        (lambda: ProgressiveLayeredExtraction([], heads(3)), ValueError, "at least one extraction level"),
        (lambda: ProgressiveLayeredExtraction(extraction_levels(TASKS, 4, [3])[0], heads(3)), TypeError,
         "levels must be a list of ExtractionLevel, got ExtractionLevel"),
        (lambda: ProgressiveLayeredExtraction(
            [ExtractionLevel({t: [layer(4, 3)] for t in TASKS}, [], 4, True),
             ExtractionLevel({t: [layer(3, 2)] for t in "xyz"}, [], 3, False)], heads(2)),
         ValueError, "level 1 has experts for tasks x, y, z, level 0 for a, b, c"),
        (lambda: ple().gate_weights(torch.randn(5, 4), level=2),
         ValueError, r"level 2 is out of range: this PLE has 2 level\(s\), 0..1"),
        (lambda: ple().expert_names(level=-3), ValueError, "level -3 is out of range"),
        (lambda: ple().gate_weights(torch.randn(5, 4), level=True), TypeError, "level must be an int"),
        (lambda: ple()(torch.randn(4), "a"), ValueError, r"take a batch of inputs \(B, 4\), got shape \(4,\)"),
        (lambda: ple(widths=(3,)).gate_weights(torch.randn(5, 6), level=0),
         ValueError, "take inputs of width 4, got \\(5, 6\\)"),
        (lambda: ple(widths=(3,)).trunk.levels[0](torch.randn(5, 4), torch.randn(5, 4)),
         ValueError, r"task_inputs must be \(B, T, D\) = \(5, 3, 4\), one row per task \(a, b, c\)"),
    ],
)
def test_ple_inputs_it_cannot_serve(call, error, message):
    with pytest.raises(error, match=message):
        call()
