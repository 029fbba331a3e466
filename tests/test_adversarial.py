"""Gradient reversal, the orthogonality penalty and the shared-private model in the training loop."""

import pytest
import torch
from torch import nn

from mtl_tutorial.adversarial import (
    AdversarialObjective, GradientReversal, SharedPrivateModel, discriminator_accuracy, orthogonality_penalty,
    reverse_gradient, reversal_ramp,
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
