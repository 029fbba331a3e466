"""Merging per-task LoRA updates: the rules on hand-made numbers, and agreement with peft."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from mtl_tutorial.lora import MultiTaskLoRAModel, copy_to_peft, lora_layers
from mtl_tutorial.merging import (
    lora_task_vector, merged_lora_model, single_task_lora_model, task_arithmetic, ties_merge, trim_to_density,
)

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

TASKS = ("sentiment", "pos", "topic")


def vector(*values):
    return {"w": torch.tensor([list(values)], dtype=torch.float64)}


def test_task_arithmetic_is_the_weighted_sum_of_the_task_vectors():
    merged = task_arithmetic([vector(1, -2), vector(3, 4)], weights=[0.5, 1.0])
    torch.testing.assert_close(merged["w"], torch.tensor([[3.5, 3.0]], dtype=torch.float64))
    torch.testing.assert_close(task_arithmetic([vector(1, -2), vector(3, 4)])["w"], torch.tensor([[4.0, 2.0]], dtype=torch.float64))


def test_trim_keeps_the_largest_magnitudes_not_the_largest_values():
    trimmed = trim_to_density(torch.tensor([3.0, -5.0, 0.5, 2.0]), density=0.5)
    assert trimmed.tolist() == [3.0, -5.0, 0.0, 0.0]
    assert trim_to_density(torch.tensor([1.0, 2.0, 3.0]), density=0.5).tolist() == [0.0, 0.0, 3.0]  # ⌊1.5⌋ = 1 kept


def test_ties_trims_elects_the_sign_and_averages_only_the_agreeing_entries():
    # trimmed: [3, 0, 0, 2] and [-2, -2, 0, 0]; sum [1, -2, 0, 2] elects [+, -, +, +]
    merged = ties_merge([vector(3, -1, 0.5, 2), vector(-2, -2, 1, 1)], density=0.5)["w"]
    assert merged.tolist() == [[3.0, -2.0, 0.0, 2.0]]  # a plain mean would give [0.5, -1, 0, 1]


def test_ties_sign_by_total_mass_or_by_count():
    vectors = [vector(5.0), vector(-1.0), vector(-1.0)]
    assert ties_merge(vectors, density=1.0, sign_method="total")["w"].item() == 5.0
    assert ties_merge(vectors, density=1.0, sign_method="frequency")["w"].item() == -1.0


def test_ties_elects_the_sign_before_the_weights_scale_the_task_vectors():
    # unweighted sum 1 - 0.6 > 0 elects +; weighted (0.5 - 0.6 < 0) would elect -
    assert ties_merge([vector(1.0), vector(-0.6)], weights=[0.5, 1.0], density=1.0)["w"].item() == 0.5


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: task_arithmetic([]), "non-empty list"),
        (lambda: task_arithmetic(vector(1)), "non-empty list"),
        (lambda: task_arithmetic([vector(1), {"v": torch.ones(1, 1)}]), "same model"),
        (lambda: task_arithmetic([vector(1), vector(1, 2)]), r"shape \(1, 2\)"),
        (lambda: task_arithmetic([vector(1), vector(2)], weights=[1.0]), "one λ_t per task"),
        (lambda: ties_merge([vector(1)], density=0), r"density must be in \(0, 1\]"),
        (lambda: ties_merge([vector(1)], sign_method="mean"), "'total'"),
    ],
)
def test_bad_inputs_are_errors_that_say_what_to_do(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- on a model, against peft ------------------------------------------------------------------


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.query, self.value = nn.Linear(6, 5), nn.Linear(5, 5)

    def forward(self, x):
        return self.value(torch.relu(self.query(x)))


def trained_toy(seed=0, r=2, alpha=4.0):
    torch.manual_seed(seed)
    model = MultiTaskLoRAModel(Toy(), {task: nn.Linear(5, 3) for task in TASKS}, ("query", "value"), r=r, alpha=alpha)
    with torch.no_grad():
        for layer in lora_layers(model.trunk).values():
            for matrices in (layer.A, layer.B):
                for p in matrices.values():
                    p.normal_()
    return model


def peft_with_task_adapters(model, r=2, alpha=4.0):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=["query", "value"])
    peft_model = get_peft_model(copy.deepcopy(Toy()), config, adapter_name=TASKS[0])
    for task in TASKS[1:]:
        peft_model.add_adapter(task, config)
    for task in TASKS:
        copy_to_peft(model.trunk, peft_model, adapter_name=task, task=task)
    return peft_model


def peft_deltas(peft_model, adapter):
    return {name: module.get_delta_weight(adapter) for name, module in peft_model.named_modules()
            if hasattr(module, "lora_A") and adapter in module.lora_A}


def by_layer_end(deltas):
    return {name.rsplit(".", 1)[-1]: delta for name, delta in deltas.items()}


def test_task_vector_is_the_scaled_product_of_B_and_A():
    model = trained_toy()
    layer = model.trunk.query
    torch.testing.assert_close(lora_task_vector(model, "pos")["query"], 2.0 * layer.B["pos"] @ layer.A["pos"])
    with pytest.raises(ValueError, match="unknown task 'genre'"):
        lora_task_vector(model, "genre")


def test_task_arithmetic_equals_peft_cat_and_peft_linear_adds_cross_terms():
    model = trained_toy()
    weights = [0.5, 1.0, 0.7]
    ours = task_arithmetic([lora_task_vector(model, task) for task in TASKS], weights)
    peft_model = peft_with_task_adapters(model)
    peft_model.add_weighted_adapter(list(TASKS), weights, "cat", combination_type="cat")
    for name, delta in by_layer_end(peft_deltas(peft_model, "cat")).items():
        torch.testing.assert_close(ours[name], delta, atol=1e-5, rtol=1e-5)
    # peft's "linear" merges A and B separately: (Σ √w_t B_t)(Σ √w_t s A_t), cross terms B_s A_t included
    peft_model.add_weighted_adapter(list(TASKS), weights, "linear", combination_type="linear")
    linear = by_layer_end(peft_deltas(peft_model, "linear"))
    layer = model.trunk.query
    root = [w**0.5 for w in weights]
    with_cross_terms = (sum(q * layer.B[t] for q, t in zip(root, TASKS)) @ sum(q * layer.A[t] for q, t in zip(root, TASKS))) * layer.scaling
    torch.testing.assert_close(linear["query"], with_cross_terms, atol=1e-5, rtol=1e-5)
    assert (linear["query"] - ours["query"]).abs().max() > 0.1
    # with one adapter there is no cross term: "linear" is task arithmetic
    peft_model.add_weighted_adapter(["pos"], [0.5], "one", combination_type="linear")
    torch.testing.assert_close(by_layer_end(peft_deltas(peft_model, "one"))["query"],
                               task_arithmetic([lora_task_vector(model, "pos")], [0.5])["query"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("density, sign_method", [(0.3, "total"), (0.6, "frequency")])
def test_ties_equals_peft_ties_svd_at_full_rank(density, sign_method):
    model = trained_toy(seed=1)
    weights = [1.0, 0.8, 0.6]
    ours = ties_merge([lora_task_vector(model, task) for task in TASKS], weights, density, sign_method)
    peft_model = peft_with_task_adapters(model)
    peft_model.add_weighted_adapter(list(TASKS), weights, "ties", combination_type="ties_svd", svd_rank=5,
                                    density=density, majority_sign_method=sign_method)
    for name, delta in by_layer_end(peft_deltas(peft_model, "ties")).items():
        torch.testing.assert_close(ours[name], delta, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("combination_type", ["ties", "ties_svd"])
def test_with_one_adapter_peft_falls_back_to_linear_and_does_not_trim(combination_type):
    model = trained_toy(seed=2)
    task_vector = lora_task_vector(model, "pos")
    peft_model = peft_with_task_adapters(model)
    peft_model.add_weighted_adapter(["pos"], [1.0], "ties1", combination_type=combination_type, svd_rank=5,
                                    density=0.5, majority_sign_method="total")
    peft_result = by_layer_end(peft_deltas(peft_model, "ties1"))
    ours = ties_merge([task_vector], [1.0], density=0.5)
    for name, delta in peft_result.items():
        torch.testing.assert_close(delta, task_arithmetic([task_vector], [1.0])[name], atol=1e-5, rtol=1e-5)  # ΔW, untrimmed
        torch.testing.assert_close(ours[name], trim_to_density(task_vector[name], 0.5))
        assert (ours[name] == 0).sum() >= task_vector[name].numel() // 2  # ours trims half of ΔW away, peft none
        assert (ours[name] - delta).abs().max() > 0.1
    torch.testing.assert_close(ties_merge([task_vector], [1.0], density=1.0)["query"], peft_result["query"],
                               atol=1e-5, rtol=1e-5)  # without trimming the two agree


def test_merged_model_computes_W0_plus_the_merged_delta_and_leaves_the_source_alone():
    model = trained_toy()
    x = torch.randn(7, 6)
    before = model(x, "sentiment").detach().clone()
    merged = merged_lora_model(model, lora_task_vector(model, "sentiment"))
    assert not lora_layers(merged) and isinstance(merged.trunk.query, nn.Linear)
    assert not any(p.requires_grad for p in merged.trunk.parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(x, "sentiment"), before, atol=1e-5, rtol=1e-5)  # the task's own delta: its own model
        torch.testing.assert_close(model(x, "sentiment"), before)  # the source is unchanged
        mean = merged_lora_model(model, task_arithmetic([lora_task_vector(model, t) for t in TASKS], [1 / 3] * 3))
        W0 = model.trunk.query.base.weight
        expected = W0 + sum(lora_task_vector(model, t)["query"] for t in TASKS) / 3
        torch.testing.assert_close(mean.trunk.query.weight, expected)
    assert set(mean.tasks) == set(TASKS)
    with pytest.raises(ValueError, match=r"missing \['value'\]"):
        merged_lora_model(model, {"query": torch.zeros(5, 6)})


def test_single_task_lora_model_serves_one_task_with_merged_weights():
    model = trained_toy()
    x = torch.randn(4, 6)
    alone = single_task_lora_model(model, "topic")
    assert alone.tasks == ("topic",)
    with torch.no_grad():
        torch.testing.assert_close(alone(x, "topic"), model(x, "topic"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: task_arithmetic([vector(1), vector(2)], 0.5),
         TypeError, r"weights must be a list with one λ_t per task vector, .*got float; e.g. \[0.5\] \* 2"),
        (lambda: task_arithmetic([vector(1), vector(2)], {"a": 1.0, "b": 1.0}),
         TypeError, "weights must be a list .* got dict"),
        (lambda: task_arithmetic([vector(1), vector(2)], [float("nan"), 1.0]),
         ValueError, r"weights must be finite numbers, got \[nan, 1.0\]"),
        (lambda: task_arithmetic([vector(1), vector(2)], [True, 1.0]), TypeError, "weights must be numbers"),
        (lambda: task_arithmetic([torch.ones(2), torch.ones(2)]),
         TypeError, r"task vector 0 must be a dict \{layer: ΔW tensor\}, got Tensor"),
        (lambda: task_arithmetic([{}, {}]), ValueError, "task vector 0 is empty"),
        (lambda: task_arithmetic([{"w": [1.0]}, {"w": [2.0]}]),
         TypeError, "w: ΔW of task 0 must be a tensor, got list"),
        (lambda: trim_to_density(torch.ones(4), 1.5), ValueError, r"density must be in \(0, 1\], .* got 1.5"),
        (lambda: trim_to_density(torch.ones(4), float("nan")), ValueError, r"density must be in \(0, 1\], .* got nan"),
        (lambda: trim_to_density(torch.ones(4), -0.5), ValueError, r"density must be in \(0, 1\]"),
        (lambda: trim_to_density([1.0, 2.0], 0.5), TypeError, "delta must be a tensor, got list"),
        (lambda: ties_merge([vector(1)], density="0.5"), ValueError, r"density must be in \(0, 1\], .* got '0.5'"),
        (lambda: ties_merge([vector(1)], density=True), ValueError, r"density must be in \(0, 1\], .* got True"),
        (lambda: ties_merge([vector(1), vector(2)], weights=[1.0, float("inf")]),
         ValueError, "weights must be finite numbers"),
        (lambda: lora_task_vector(nn.Linear(2, 2), "pos"),
         TypeError, "model must be a MultiTaskLoRAModel .* got Linear"),
        (lambda: single_task_lora_model(nn.Linear(2, 2), "pos"), TypeError, "model must be a MultiTaskLoRAModel"),
        (lambda: merged_lora_model(trained_toy(), [lora_task_vector(trained_toy(), "pos")]), TypeError,
         r"merged_deltas must be one dict \{layer: ΔW\}, got list; merge the task vectors first"),
        (lambda: merged_lora_model(trained_toy(), {"query": torch.zeros(6, 5), "value": torch.zeros(5, 5)}), ValueError,
         r"query: the merged ΔW must be a tensor of the layer's weight shape \(5, 6\), got \(6, 5\)"),
        (lambda: merged_lora_model(trained_toy(), {"query": torch.full((5, 6), float("nan")), "value": torch.zeros(5, 5)}), ValueError,
         "query: the merged ΔW has nan or inf entries"),
    ],
)
def test_merging_refuses_what_it_cannot_serve(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_weights_may_be_a_tensor_or_numpy_numbers():
    vectors = [vector(1, -2), vector(3, 4)]
    expected = task_arithmetic(vectors, [0.5, 1.0])["w"]
    torch.testing.assert_close(task_arithmetic(vectors, torch.tensor([0.5, 1.0]))["w"], expected)
    torch.testing.assert_close(task_arithmetic(vectors, (np.float64(0.5), 1))["w"], expected)
