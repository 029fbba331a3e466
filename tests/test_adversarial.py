"""Gradient reversal, the orthogonality penalty and the shared-private model in the training loop."""

import math

import pytest
import torch
from torch import nn

from mtl_tutorial.adversarial import (
    AdversarialObjective, ConfusionObjective, GradientReversal, SharedPrivateModel, discriminator_accuracy,
    orthogonality_penalty, post_hoc_probe, reverse_gradient, reversal_ramp,
)
from mtl_tutorial.data import MultiTaskDataset
from mtl_tutorial.schedules import schedule_loader
from mtl_tutorial.training import train


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0, 3.0])
def test_gradient_reversal_is_the_identity_forward_and_minus_lambda_times_the_gradient_backward(scale):
    h = torch.randn(4, 3, requires_grad=True)
    upstream = torch.randn(4, 3)
    out = GradientReversal(scale)(h)
    assert torch.equal(out, h)
    out.backward(upstream)
    assert torch.equal(h.grad, -scale * upstream)
    with pytest.raises(ValueError, match="reversal scale λ must be >= 0"):
        reverse_gradient(h, -1.0)


def test_orthogonality_penalty_by_hand_and_zero_for_orthogonal_features():
    shared = torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, -1.0]])
    private = torch.tensor([[2.0], [1.0], [0.0]])
    # Sᵀ P = [[1·2 + 0·1 + 3·0], [2·2 + 1·1 − 1·0]] = [[2], [5]]  ->  ‖·‖_F² = 4 + 25
    assert orthogonality_penalty(shared, private).item() == pytest.approx(29.0)
    orthogonal = torch.tensor([[-3.0], [7.0], [1.0]])  # the cross product of S's two columns
    assert orthogonality_penalty(shared, orthogonal).item() == 0.0
    s = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    p = torch.tensor([[0.0, 0.0], [0.0, 5.0]])  # every column of S is orthogonal to every column of P
    assert orthogonality_penalty(s, p).item() == 0.0
    with pytest.raises(ValueError, match="same n examples"):
        orthogonality_penalty(torch.zeros(3, 2), torch.zeros(4, 2))


def make_model(seed=0, reversal=1.0):
    torch.manual_seed(seed)
    return SharedPrivateModel(
        shared=nn.Linear(5, 3), private={"a": nn.Linear(5, 2), "b": nn.Linear(5, 2)},
        heads={"a": nn.Linear(5, 4), "b": nn.Linear(5, 2)}, shared_dim=3, reversal=reversal,
    )


def test_heads_read_shared_and_private_features_and_a_mixed_batch_equals_per_task_forwards():
    model = make_model()
    x = torch.randn(6, 5)
    expected = model.heads["a"](torch.cat([model.trunk(x), model.private["a"](x)], dim=1))
    torch.testing.assert_close(model(x, "a"), expected)
    names = ["a", "b", "b", "a", "b", "a"]
    for task, (outputs, positions) in model(x, names).items():
        torch.testing.assert_close(outputs, model(x[positions], task))
    with pytest.raises(ValueError, match="unknown task 'c'; tasks are: a, b"):
        model(x, "c")
    with pytest.raises(TypeError, match="map task ids to names first"):
        model(x, torch.zeros(6))
    with pytest.raises(ValueError, match="one private encoder and one head per task"):
        SharedPrivateModel(nn.Linear(5, 3), {"a": nn.Linear(5, 2)}, {"a": nn.Linear(5, 4), "b": nn.Linear(5, 2)}, shared_dim=3)


def test_the_extra_terms_use_the_last_batch_and_the_orthogonality_term_sums_over_tasks():
    model = make_model()
    with pytest.raises(RuntimeError, match="run a forward pass first"):
        model.adversarial_loss()
    x, names = torch.randn(6, 5), ["a", "b", "b", "a", "b", "a"]
    model(x, names)
    a, b = torch.tensor([0, 3, 5]), torch.tensor([1, 2, 4])
    shared = model.trunk(x)
    expected = orthogonality_penalty(shared[a], model.private["a"](x[a])) + orthogonality_penalty(shared[b], model.private["b"](x[b]))
    torch.testing.assert_close(model.orthogonality_loss(), expected)
    logits = model.discriminator(shared)
    torch.testing.assert_close(model.adversarial_loss(), nn.functional.cross_entropy(logits, torch.tensor([0, 1, 1, 0, 1, 0])))


def test_one_backward_trains_the_discriminator_down_and_the_shared_encoder_up_its_loss():
    model = make_model(reversal=1.0)
    x, names = torch.randn(8, 5), ["a", "b"] * 4
    model(x, names)
    model.adversarial_loss().backward()
    reversed_grad = model.trunk.weight.grad.clone()
    discriminator_grad = model.discriminator.weight.grad.clone()
    plain = make_model(reversal=1.0)
    shared = plain.trunk(x)
    loss = nn.functional.cross_entropy(plain.discriminator(shared), plain.task_ids(names))
    loss.backward()
    torch.testing.assert_close(reversed_grad, -plain.trunk.weight.grad)  # the encoder ascends L_adv
    torch.testing.assert_close(discriminator_grad, plain.discriminator.weight.grad)  # D descends it


def test_adversarial_objective_adds_both_weighted_terms_and_logs_them():
    model = make_model()
    x, names = torch.randn(6, 5), ["a", "b", "b", "a", "b", "a"]
    routed = model(x, names)
    losses = {task: out.outputs.pow(2).mean() for task, out in routed.items()}
    objective = AdversarialObjective(adversarial_weight=0.3, orthogonality_weight=0.2, reversal=2.0, ramp_steps=10,
                                     task_weights={"a": 2.0})
    total, weights = objective(losses, model=model, step=5)
    assert model.reversal.scale == pytest.approx(2.0 * reversal_ramp(0.5))
    expected = 2.0 * losses["a"] + losses["b"] + 0.3 * model.adversarial_loss() + 0.2 * model.orthogonality_loss()
    torch.testing.assert_close(total, expected)
    assert weights == {"a": 2.0, "b": 1.0}
    assert objective.log["adversarial"] == [pytest.approx(float(model.adversarial_loss().detach()))]
    with pytest.raises(TypeError, match="needs a SharedPrivateModel"):
        objective(losses, model=nn.Linear(2, 2))


def test_default_weights_fit_our_raw_penalty_not_the_public_codes_normalised_one():
    objective = AdversarialObjective()
    assert (objective.adversarial_weight, objective.orthogonality_weight) == (0.05, 1e-6)
    # the docstring's formula: the public code's penalty is ours on centred, row-normalised features / (H_s · H_p)
    torch.manual_seed(0)
    shared, private = torch.randn(64, 6).exp(), torch.randn(64, 4).relu()

    def centred_unit(features):
        return nn.functional.normalize(features - features.mean(0), dim=1)

    public = (centred_unit(private).T @ centred_unit(shared)).pow(2).mean()
    torch.testing.assert_close(public, orthogonality_penalty(centred_unit(shared), centred_unit(private)) / (6 * 4))
    assert orthogonality_penalty(shared, private) > 100 * public  # raw sums of uncentred features: far larger


def test_trained_with_the_course_loop_the_discriminator_reads_separable_tasks_without_reversal():
    torch.manual_seed(0)
    data = {"a": (torch.randn(64, 5) + 2.0, torch.randint(0, 4, (64,))), "b": (torch.randn(64, 5) - 2.0, torch.randint(0, 2, (64,)))}
    model = make_model()
    loader = schedule_loader(MultiTaskDataset(data), "joint", batch_size=16, num_batches=4)
    objective = AdversarialObjective(adversarial_weight=1.0, orthogonality_weight=0.0, reversal=0.0)  # no fight
    history = train(model, loader, {t: nn.functional.cross_entropy for t in data}, num_steps=300, lr=1e-2,
                    weighting=objective, progress=False)
    assert len(objective.log["adversarial"]) == len(history.steps) == 300
    assert objective.log["adversarial"][-1] < 0.5 * objective.log["adversarial"][0]
    assert discriminator_accuracy(model, {t: x for t, (x, _) in data.items()}) > 0.95  # chance: 0.5


def test_reversal_ramp_follows_ganins_schedule():
    assert reversal_ramp(0.0) == 0.0 and reversal_ramp(2.0) == reversal_ramp(1.0)
    assert reversal_ramp(0.1) == pytest.approx(2 / (1 + 2.718281828459045 ** -1) - 1)
    assert 0.98 < reversal_ramp(0.5) < 1.0
    with pytest.raises(ValueError, match="ramp_steps must be >= 1"):
        AdversarialObjective(ramp_steps=0)


def test_objective_refuses_task_weights_for_unknown_tasks():
    model = make_model()
    routed = model(torch.randn(4, 5), ["a", "b", "a", "b"])
    losses = {task: out.outputs.pow(2).mean() for task, out in routed.items()}
    with pytest.raises(ValueError, match="task_weights name unknown task\\(s\\) 'aa'; tasks are: a, b"):
        AdversarialObjective(task_weights={"aa": 2.0})(losses, model=model, step=1)  # was weight 1 for 'a', silently


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: reverse_gradient(torch.ones(2), float("inf")),
         ValueError, "the reversal scale λ must be >= 0 and finite, got inf"),
        (lambda: reverse_gradient(torch.ones(2), float("nan")),
         ValueError, "the reversal scale λ must be >= 0 and finite, got nan"),
        (lambda: reverse_gradient(torch.ones(2), "1"),
         TypeError, "the reversal scale λ must be a number >= 0, got str"),
        (lambda: reverse_gradient([1.0, 2.0]), TypeError, "features must be a tensor, got list"),
        (lambda: GradientReversal(-1.0), ValueError, "the reversal scale λ must be >= 0"),
        (lambda: orthogonality_penalty([[1.0]], [[1.0]]),
         TypeError, "shared and private features must be tensors, got list and list"),
        (lambda: make_model(reversal=-1.0), ValueError, "the reversal scale λ must be >= 0"),
        (lambda: SharedPrivateModel(nn.Linear(5, 3), {"a": nn.Linear(5, 2)}, {"a": nn.Linear(5, 4)}, shared_dim=0), ValueError,
         r"shared_dim \(the width of the shared features\) must be an int >= 1, got 0"),
        (lambda: SharedPrivateModel(nn.Linear(5, 3), {"a": nn.Linear(5, 2)}, {"a": nn.Linear(5, 4)}, shared_dim=True), ValueError,
         "must be an int >= 1, got True"),
        (lambda: SharedPrivateModel(nn.Linear(5, 3), [nn.Linear(5, 2)], {"a": nn.Linear(5, 4)}, shared_dim=3), TypeError,
         "private must be a dict task -> encoder, got list"),
        (lambda: SharedPrivateModel(nn.Linear(5, 3), {"a": nn.Linear(5, 2)}, {"a": nn.Linear(5, 4)}, discriminator="linear"), TypeError,
         "discriminator must be an nn.Module"),
        (lambda: make_model().task_ids(["a", "c"]), ValueError, "unknown task 'c'; tasks are: a, b"),
        (lambda: make_model().task_ids("ab"),
         TypeError, "names must be a list with one task name per example, got str 'ab'"),
        (lambda: reversal_ramp(float("nan")), ValueError, "progress is nan"),
        (lambda: reversal_ramp("0.5"), TypeError, "progress must be a number"),
        (lambda: AdversarialObjective(adversarial_weight=float("nan")),
         ValueError, "adversarial_weight must be >= 0 and finite, got nan"),
        (lambda: AdversarialObjective(orthogonality_weight=-0.1), ValueError, "orthogonality_weight must be >= 0"),
        (lambda: AdversarialObjective(reversal=True), TypeError, "reversal must be a number >= 0, got bool"),
        (lambda: AdversarialObjective(ramp_steps=2.5), ValueError, "ramp_steps must be >= 1 or None, got 2.5"),
        (lambda: AdversarialObjective(task_weights={"a": float("nan")}),
         ValueError, "the weight of task 'a' must be >= 0 and finite"),
        (lambda: AdversarialObjective(task_weights=[1.0, 2.0]), TypeError, "task_weights must be a dict"),
        (lambda: discriminator_accuracy(make_model(), {}), ValueError, "inputs is empty"),
        (lambda: discriminator_accuracy(make_model(), torch.randn(3, 5)),
         TypeError, "inputs must be a dict task -> inputs"),
        (lambda: discriminator_accuracy(make_model(), {"a": (torch.randn(3, 5), torch.zeros(3))}), TypeError,
         "inputs\\['a'\\] is a tuple; pass the inputs only, not \\(inputs, targets\\)"),
        (lambda: discriminator_accuracy(make_model(), {"a": torch.randn(0, 5)}),
         ValueError, "inputs\\['a'\\] has no examples"),
        (lambda: discriminator_accuracy(make_model(), {"c": torch.randn(3, 5)}), ValueError, "unknown task 'c'"),
        (lambda: discriminator_accuracy(nn.Linear(5, 2), {"a": torch.randn(3, 5)}),
         TypeError, "needs a SharedPrivateModel, got Linear"),
    ],
)
def test_adversarial_parts_refuse_what_they_cannot_serve(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_a_discriminator_with_the_wrong_number_of_logits_is_named():
    model = make_model()
    model.discriminator = nn.Linear(3, 1)
    model(torch.randn(4, 5), ["a", "b", "a", "b"])
    with pytest.raises(ValueError, match=r"the discriminator returns \(4, 1\) for 4 examples, but there are 2 tasks"):
        model.adversarial_loss()


def test_the_confusion_loss_moves_the_encoder_towards_a_unsure_discriminator_and_d_only_by_its_own_loss():
    model = make_model()
    x, names = torch.randn(8, 5), ["a", "b"] * 4
    routed = model(x, names)
    losses = {task: out.outputs.pow(2).mean() for task, out in routed.items()}
    objective = ConfusionObjective(adversarial_weight=0.5, orthogonality_weight=0.0, confusion_weight=2.0)
    total, _ = objective(losses, model=model, step=1)
    assert model.reversal.scale == 0.0   # D's loss sends nothing into the encoder
    logits = model.discriminator(model.trunk(x))
    confusion = -torch.log_softmax(logits, dim=1).mean()
    torch.testing.assert_close(total, losses["a"] + losses["b"] + 0.5 * model.adversarial_loss() + 2.0 * confusion)
    assert objective.log["confusion"] == [pytest.approx(float(confusion.detach()))]
    total.backward()
    # D's gradient is that of its own cross-entropy only: the confusion term reaches D through a detached copy
    expected = make_model()
    loss = 0.5 * nn.functional.cross_entropy(expected.discriminator(expected.trunk(x)), expected.task_ids(names))
    loss.backward()
    torch.testing.assert_close(model.discriminator.weight.grad, expected.discriminator.weight.grad)
    # the encoder descends CE(uniform, D(S(x))): its smallest value, log T, is reached by a uniform D
    model.discriminator.weight.data.zero_()
    model.discriminator.bias.data.zero_()
    model(x, names)
    objective(losses, model=model, step=1)
    assert objective.log["confusion"][-1] == pytest.approx(math.log(2))


def test_a_post_hoc_probe_reads_the_task_where_the_features_carry_it_and_chance_where_they_do_not():
    torch.manual_seed(0)
    carried = {"a": torch.randn(200, 4) + torch.tensor([3.0, 0, 0, 0]), "b": torch.randn(200, 4) - torch.tensor([3.0, 0, 0, 0])}
    test = {"a": torch.randn(100, 4) + torch.tensor([3.0, 0, 0, 0]), "b": torch.randn(100, 4) - torch.tensor([3.0, 0, 0, 0])}
    assert post_hoc_probe(nn.Identity(), carried, test) > 0.95
    hidden = {"a": torch.randn(600, 4), "b": torch.randn(200, 4)}   # features that carry nothing: the larger task
    assert abs(post_hoc_probe(nn.Identity(), hidden, {"a": torch.randn(300, 4), "b": torch.randn(100, 4)}) - 0.75) < 0.05
    # trained on the training features, never on the test ones: a probe fitted on test would score ~1 here
    flipped = {"a": test["b"], "b": test["a"]}
    assert post_hoc_probe(nn.Identity(), carried, flipped) < 0.05
    # an MLP probe reads what a linear one cannot (the task is the sign of x0 · x1)
    xor = torch.randn(800, 2)
    same_sign = xor[:, 0] * xor[:, 1] > 0
    xor_train = {"a": xor[same_sign][:300], "b": xor[~same_sign][:300]}
    xor_test = {"a": xor[same_sign][300:], "b": xor[~same_sign][300:]}
    assert post_hoc_probe(nn.Identity(), xor_train, xor_test, hidden=16, steps=500) > post_hoc_probe(
        nn.Identity(), xor_train, xor_test) + 0.2


def test_a_post_hoc_probe_leaves_the_encoder_and_the_random_stream_as_they_were():
    encoder = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5))
    encoder.train()
    before = [p.detach().clone() for p in encoder.parameters()]
    torch.manual_seed(1)
    expected_next = torch.rand(1)
    torch.manual_seed(1)
    data = {"a": torch.ones(5, 4), "b": -torch.ones(5, 4)}
    post_hoc_probe(encoder, data, data, steps=5)
    assert torch.equal(torch.rand(1), expected_next)
    assert encoder.training and all(torch.equal(p, q) for p, q in zip(encoder.parameters(), before))
    assert all(p.grad is None for p in encoder.parameters())


@pytest.mark.parametrize("train_inputs, test_inputs, hidden, message", [
    ({"a": torch.ones(3, 2)}, {"a": torch.ones(3, 2)}, None, "at least two tasks"),
    ({"a": torch.ones(3, 2), "b": torch.ones(3, 2)}, {"b": torch.ones(3, 2), "a": torch.ones(3, 2)}, None,
     "same tasks in the same order"),
    ({"a": torch.ones(3, 2), "b": torch.ones(0, 2)}, {"a": torch.ones(3, 2), "b": torch.ones(3, 2)}, None,
     "has no examples"),
    ({"a": torch.ones(3, 2), "b": torch.ones(3, 2)}, {"a": torch.ones(3, 2), "b": torch.ones(3, 2)}, 0,
     "hidden must be None"),
])
def test_a_post_hoc_probe_refuses_inputs_it_cannot_read(train_inputs, test_inputs, hidden, message):
    with pytest.raises(ValueError, match=message):
        post_hoc_probe(nn.Identity(), train_inputs, test_inputs, hidden=hidden)
    with pytest.raises(TypeError, match="pass the inputs only"):
        post_hoc_probe(nn.Identity(), {"a": (torch.ones(3, 2), torch.zeros(3)), "b": torch.ones(3, 2)}, test_inputs)
