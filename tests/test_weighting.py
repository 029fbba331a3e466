"""Loss weighting strategies: pinned values, the properties the papers promise, bad input, training."""

from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from transformers import BertConfig, BertModel

from mtl_tutorial.backbone import mean_pool
from mtl_tutorial.data import MultiTaskDataset, multitask_loader
from mtl_tutorial.models import HardSharingModel, mlp
from mtl_tutorial.training import train
from mtl_tutorial.weighting import (
    DynamicWeightAverage,
    EqualWeighting,
    GradNorm,
    StaticWeighting,
    UncertaintyWeighting,
    last_shared_weight,
)

LOSSES = {"a": torch.tensor(2.0), "b": torch.tensor(0.5)}


def test_equal_and_static_weights():
    total, weights = EqualWeighting(["a", "b"])(LOSSES)
    assert total.item() == 2.5 and weights == {"a": 1.0, "b": 1.0}
    total, weights = StaticWeighting({"a": 0.25, "b": 2.0})(LOSSES)
    assert total.item() == 1.5 and weights == {"a": 0.25, "b": 2.0}
    total, weights = StaticWeighting({"a": 0.25, "b": 2.0})({"b": LOSSES["b"]})  # a batch without task a
    assert total.item() == 1.0 and weights == {"b": 2.0}


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="unknown task\\(s\\) 'c'; tasks are: a, b"):
        EqualWeighting(["a", "b"])({"c": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="weight of task 'a' must be finite and >= 0"):
        StaticWeighting({"a": -1.0, "b": 1.0})
    with pytest.raises(ValueError, match="non-empty list of task names"):
        UncertaintyWeighting("ab")
    with pytest.raises(ValueError, match="distinct strings"):
        GradNorm(["a", "a"])
    with pytest.raises(ValueError, match="losses is empty"):
        EqualWeighting(["a"])({})
    with pytest.raises(ValueError, match="window must be a positive number of steps"):
        DynamicWeightAverage(["a", "b"], window=0)
    with pytest.raises(ValueError, match="needs the 1-based step"):
        DynamicWeightAverage(["a", "b"])(LOSSES)
    with pytest.raises(TypeError, match="it has no .trunk"):
        last_shared_weight(nn.Linear(2, 2), LOSSES)
    for strategy in (EqualWeighting(["a", "b"]), UncertaintyWeighting(["a", "b"]), GradNorm(["a", "b"])):
        with pytest.raises(ValueError, match=r"loss of task 'a' must be a 0-dim tensor, got \(8,\); reduce it"):
            strategy({"a": torch.ones(8), "b": torch.tensor(1.0)}, model=nn.Linear(1, 1))


def test_uncertainty_weighting_values_and_its_optimum_is_sigma_squared_equal_to_the_loss():
    weighting = UncertaintyWeighting(["a", "b"])
    total, weights = weighting(LOSSES)
    assert total.item() == pytest.approx(1.25) and weights == {"a": 0.5, "b": 0.5}  # s = 0: Σ L_t / 2
    with torch.no_grad():
        weighting.log_variances.copy_(torch.tensor([2.0, 0.5]).log())  # σ_t² = L_t
    weighting(LOSSES)[0].backward()
    torch.testing.assert_close(weighting.log_variances.grad, torch.zeros(2))  # stationary ...
    for shift in (-0.1, 0.1):  # ... and a minimum: the total is convex in s_t
        with torch.no_grad():
            moved = weighting.log_variances + shift
        assert (torch.exp(-moved) * torch.tensor([2.0, 0.5]) / 2 + moved / 2).sum() > weighting(LOSSES)[0]
    _, weights = weighting(LOSSES)
    assert weights == pytest.approx({"a": 1 / (2 * 2.0), "b": 1 / (2 * 0.5)})  # λ_t = 1 / (2 L_t)


def linear_losses(shared, scale_a, scale_b):
    """L_a = scale_a · W_0, L_b = scale_b · W_1 with W = 1: loss and gradient norm both equal the scale."""
    return {"a": scale_a * shared[0], "b": scale_b * shared[1]}


def test_gradnorm_moves_weight_to_the_slower_task():
    shared = nn.Parameter(torch.ones(2))
    gradnorm = GradNorm(["a", "b"], alpha=1.5, shared_parameters=[shared])
    total, weights = gradnorm(linear_losses(shared, 1.0, 1.0))  # step 0: records L_t(0) = 1
    assert weights == {"a": 1.0, "b": 1.0} and total.item() == 2.0
    torch.testing.assert_close(gradnorm.logits.grad, torch.zeros(2))  # equal rates, equal norms: no change
    # task a halved its loss, task b did not: r = (2/3, 4/3), G = (0.5, 1), targets 0.75 r^1.5
    gradnorm(linear_losses(shared, 0.5, 1.0))
    torch.testing.assert_close(gradnorm.logits.grad, torch.tensor([0.75, -0.75]))
    with torch.no_grad():
        gradnorm.logits -= 0.1 * gradnorm.logits.grad  # a gradient step on θ
    weights = gradnorm.task_weights()
    assert weights[1] > 1.0 > weights[0] and weights.sum().item() == pytest.approx(2.0)


def test_gradnorm_reduces_the_task_gradients_with_the_reducer_it_is_handed():
    shared = nn.Parameter(torch.ones(2))
    gradnorm = GradNorm(["a", "b"], alpha=1.5, shared_parameters=[shared])
    gradnorm(linear_losses(shared, 1.0, 1.0))
    seen = []

    def mean_with_an_idle_rank(grads):  # the mean over 2 ranks, the other one's task gradients all 0
        seen.append(tuple(grads.shape))
        return (grads + torch.zeros_like(grads)) / 2

    gradnorm(linear_losses(shared, 0.5, 1.0), reduce=mean_with_an_idle_rank)
    assert seen == [(2, 2)]  # (T, |W|)
    # half the norms G of test_gradnorm_moves_weight_to_the_slower_task, so half its θ gradient
    torch.testing.assert_close(gradnorm.logits.grad, torch.tensor([0.375, -0.375]))


class MeanPooledBert(nn.Module):
    """A tiny BERT trunk used as it comes (every parameter trainable): mean pooling, so its pooler,
    the last registered Linear, is never used."""

    def __init__(self):
        super().__init__()
        config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=16)
        self.bert = BertModel(config)

    def forward(self, input_ids):
        mask = torch.ones_like(input_ids)
        return mean_pool(self.bert(input_ids=input_ids, attention_mask=mask).last_hidden_state, mask)


def bert_gradnorm_setup():
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (32, 6))
    data = {"a": (ids, ids[:, 0] % 2), "b": (ids, (ids[:, 1] > 25).long())}
    loader = multitask_loader(MultiTaskDataset(data), batch_size=16, strategy="uniform", mixed=True, seed=0)
    model = HardSharingModel(MeanPooledBert(), {"a": nn.Linear(16, 2), "b": nn.Linear(16, 2)})
    return model, loader, {"a": nn.functional.cross_entropy, "b": nn.functional.cross_entropy}


def test_gradnorm_on_a_fresh_bert_trunk_uses_the_top_layer_not_the_unused_pooler():
    model, loader, loss_fns = bert_gradnorm_setup()
    gradnorm = GradNorm(["a", "b"], lr=0.05)
    history = train(model, loader, loss_fns, num_steps=6, lr=1e-3, weighting=gradnorm, progress=False)
    assert gradnorm.shared_parameters[0] is model.trunk.bert.encoder.layer[-1].output.dense.weight
    weights = np.array([history.task_weights["a"], history.task_weights["b"]])
    assert not np.allclose(weights[:, -1], weights[:, 0])  # the weights moved
    assert np.allclose(weights.sum(0), 2.0)


def test_gradnorm_says_when_its_shared_weights_get_no_gradient():
    model, loader, loss_fns = bert_gradnorm_setup()
    unused = GradNorm(["a", "b"], shared_parameters=[model.trunk.bert.pooler.dense.weight])
    with pytest.raises(ValueError, match="every task's gradient norm at GradNorm's shared weights W is 0"):
        train(model, loader, loss_fns, num_steps=1, weighting=unused, progress=False)
    model = HardSharingModel(nn.Linear(2, 2), {"a": nn.Linear(2, 1)})
    loss = model.heads["a"](torch.ones(3, 2)).pow(2).mean()  # the head alone: the trunk is not in the graph
    with pytest.raises(ValueError, match="the task losses reach none of the trunk's trainable nn.Linear layers"):
        last_shared_weight(model, {"a": loss})


def test_gradnorm_rejects_a_first_loss_of_zero():
    shared = nn.Parameter(torch.ones(2))
    gradnorm = GradNorm(["a", "b"], shared_parameters=[shared])
    with pytest.raises(ValueError, match="the first loss of task 'b' is 0.0, so its training rate L_t / L_t\\(0\\)"):
        gradnorm(linear_losses(shared, 1.0, 0.0))


def test_dwa_weights_follow_the_loss_ratios_and_sum_to_t():
    dwa = DynamicWeightAverage(["a", "b"], window=2, temperature=2.0)
    schedule = [(1.0, 1.0), (1.0, 1.0), (0.5, 0.9), (0.5, 0.9), (0.4, 0.4)]  # windows of 2 steps
    recorded = [dwa({"a": torch.tensor(a), "b": torch.tensor(b)}, step=k + 1)[1] for k, (a, b) in enumerate(schedule)]
    assert recorded[:4] == [{"a": 1.0, "b": 1.0}] * 4  # equal until two windows are complete
    expected = 2 * torch.softmax(torch.tensor([0.5, 0.9]) / 2.0, dim=0)  # rates 0.5/1 and 0.9/1
    assert [recorded[4]["a"], recorded[4]["b"]] == pytest.approx(expected.tolist())
    assert recorded[4]["b"] > recorded[4]["a"]  # b's loss fell less: more weight
    generator = torch.Generator().manual_seed(0)
    dwa = DynamicWeightAverage(["a", "b", "c"], window=3)
    for step in range(1, 20):
        losses = dict(zip("abc", torch.rand(3, generator=generator) + 0.1))
        total, weights = dwa(losses, step=step)
        assert sum(weights.values()) == pytest.approx(3.0)


def training_setup():
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    data = {"big": (x, (x @ torch.ones(4)) * 10), "small": (x, x[:, 0] * 0.1)}  # losses of different scale
    loader = multitask_loader(MultiTaskDataset(data), batch_size=16, strategy="uniform", mixed=True, seed=0)
    head = lambda: nn.Sequential(nn.Linear(8, 1), nn.Flatten(0))  # noqa: E731
    model = HardSharingModel(mlp(4, 8), {"big": head(), "small": head()})
    return model, loader, {"big": nn.functional.mse_loss, "small": nn.functional.mse_loss}


@pytest.mark.parametrize(
    "strategy",
    [EqualWeighting, partial(UncertaintyWeighting, lr=0.05), partial(GradNorm, lr=0.05),
     partial(DynamicWeightAverage, window=3)],
    ids=["equal", "uncertainty", "gradnorm", "dwa"],
)
def test_every_strategy_plugs_into_the_training_loop(strategy):
    model, loader, loss_fns = training_setup()
    weighting = strategy(("big", "small"))
    history = train(model, loader, loss_fns, num_steps=12, lr=0.01, weighting=weighting, progress=False)
    weights = np.array([history.task_weights["big"], history.task_weights["small"]])
    assert weights.shape == (2, 12) and np.isfinite(weights).all() and (weights > 0).all()
    if isinstance(weighting, (GradNorm, DynamicWeightAverage)):
        assert np.allclose(weights.sum(0), 2.0)
    if isinstance(weighting, (GradNorm, UncertaintyWeighting)):  # learned: the weights moved
        assert not np.allclose(weights[:, -1], weights[:, 0])
    if isinstance(weighting, GradNorm):
        assert weighting.shared_parameters[0] is model.trunk[0].weight  # the last shared linear layer
        assert weights[1, -1] > weights[0, -1]  # the small-loss task needs a larger weight to match norms
