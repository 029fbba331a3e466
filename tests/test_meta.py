"""Meta-learning: the inner loop, Reptile and first-order MAML against hand computations; few-shot data flow."""

import numpy as np
import pytest
import torch
from torch import nn

from mtl_tutorial.meta import (
    ClassificationEpisodes, Episode, SinusoidTasks, adapt, few_shot_accuracy, few_shot_support, fomaml_gradient,
    fomaml_step, inner_loop, meta_train, reptile_step,
)


def linear_model(weight):
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([weight]))
    return model


def half_squared_error(outputs, targets):
    return 0.5 * (outputs - targets).pow(2).sum()


A = torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, -1.0]])
B_SUPPORT = torch.tensor([[1.0], [0.0], [2.0]])
B_QUERY = torch.tensor([[0.0], [1.0], [-1.0]])


def hand_inner_step(w, b, lr):
    """On L(w) = ½‖A w − b‖², one SGD step is w − lr · Aᵀ(A w − b)."""
    return w - lr * A.T @ (A @ w - b)


def test_inner_loop_takes_explicit_sgd_steps_and_leaves_the_model_alone():
    model = linear_model([0.5, -0.5])
    adapted = inner_loop(model, half_squared_error, (A, B_SUPPORT), steps=2, lr=0.05)
    w = torch.tensor([[0.5], [-0.5]])
    expected = hand_inner_step(hand_inner_step(w, B_SUPPORT, 0.05), B_SUPPORT, 0.05)
    torch.testing.assert_close(adapted["weight"], expected.T)
    assert model.weight.tolist() == [[0.5, -0.5]]
    with pytest.raises(ValueError, match="steps >= 0 and lr > 0"):
        inner_loop(model, half_squared_error, (A, B_SUPPORT), steps=1, lr=0.0)


def test_one_reptile_step_is_theta_plus_epsilon_times_the_mean_move():
    model = linear_model([0.5, -0.5])
    w = torch.tensor([[0.5], [-0.5]])
    episodes = [Episode((A, B_SUPPORT), (A, B_QUERY), half_squared_error), Episode((A, B_QUERY), (A, B_SUPPORT), half_squared_error)]
    reptile_step(model, episodes, inner_steps=3, inner_lr=0.05, meta_lr=0.4)
    adapted = []
    for b in (B_SUPPORT, B_QUERY):
        v = w
        for _ in range(3):
            v = hand_inner_step(v, b, 0.05)
        adapted.append(v)
    expected = w + 0.4 * ((adapted[0] - w) + (adapted[1] - w)) / 2
    torch.testing.assert_close(model.weight.detach(), expected.T)


def test_first_order_maml_meta_gradient_is_the_query_gradient_at_the_adapted_parameters():
    model = linear_model([0.5, -0.5])
    w = torch.tensor([[0.5], [-0.5]])
    episode = Episode((A, B_SUPPORT), (A, B_QUERY), half_squared_error)
    gradient, query_loss = fomaml_gradient(model, [episode], inner_steps=1, inner_lr=0.05)
    w_adapted = hand_inner_step(w, B_SUPPORT, 0.05)
    torch.testing.assert_close(gradient["weight"], (A.T @ (A @ w_adapted - B_QUERY)).T)  # ∇L_query(θ'), no Jacobian
    assert query_loss == pytest.approx(float(0.5 * (A @ w_adapted - B_QUERY).pow(2).sum()))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    fomaml_step(model, [episode], 1, 0.05, optimizer)
    torch.testing.assert_close(model.weight.detach(), (w - 0.1 * A.T @ (A @ w_adapted - B_QUERY)).T)


def test_episode_heads_are_adapted_and_thrown_away_only_the_model_is_meta_learned():
    torch.manual_seed(0)
    trunk = nn.Linear(3, 4)
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    head = nn.Linear(4, 3)
    head_before = head.weight.detach().clone()
    before = {name: p.detach().clone() for name, p in trunk.named_parameters()}
    reptile_step(trunk, [Episode((x, y), (x, y), nn.functional.cross_entropy, head)], inner_steps=2, inner_lr=0.1, meta_lr=1.0)
    adapted = inner_loop(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 3)), nn.functional.cross_entropy, (x, y), 2, 0.1,
                         params={"0.weight": before["weight"].clone().requires_grad_(), "0.bias": before["bias"].clone().requires_grad_(),
                                 "1.weight": head_before.clone().requires_grad_(), "1.bias": head.bias.detach().clone().requires_grad_()})
    torch.testing.assert_close(trunk.weight.detach(), adapted["0.weight"])  # ε = 1: θ jumps to θ'
    assert torch.equal(head.weight, head_before)


def test_meta_training_on_sinusoids_beats_the_random_initialisation_after_adaptation():
    family = SinusoidTasks(k_shot=10, query_size=50)
    torch.manual_seed(0)
    random_init = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 1))
    meta = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 1))
    meta.load_state_dict(random_init.state_dict())
    losses = meta_train(meta, family, num_steps=300, method="reptile", meta_batch_size=4, inner_steps=5, inner_lr=0.02,
                        meta_lr=0.5, progress=False)
    assert len(losses) == 300 and np.mean(losses[-50:]) < np.mean(losses[:50])
    rng = np.random.default_rng(123)
    errors = {"random": [], "meta": []}
    for _ in range(30):
        episode = family(rng)
        for name, model in (("random", random_init), ("meta", meta)):
            adapted = adapt(model, episode.support, nn.functional.mse_loss, steps=5, lr=0.02)
            with torch.no_grad():
                errors[name].append(float(nn.functional.mse_loss(adapted(episode.query[0]), episode.query[1])))
    assert np.mean(errors["meta"]) < 0.7 * np.mean(errors["random"])
    with pytest.raises(ValueError, match="unknown method 'maml'"):
        meta_train(meta, family, 1, method="maml")


def test_few_shot_support_draws_k_of_every_class_and_adaptation_never_reads_the_test_split():
    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 4)
    chosen = few_shot_support(labels, 3, np.random.default_rng(0))
    assert sorted(labels[chosen].tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2] and len(set(chosen.tolist())) == 9
    with pytest.raises(ValueError, match="class 1 has 3 examples, fewer than k_per_class = 4"):
        few_shot_support(labels, 4, np.random.default_rng(0))
    torch.manual_seed(0)
    trunk = nn.Linear(3, 4)
    train_split = (torch.randn(12, 3), labels)
    test_split = (torch.randn(20, 3), torch.randint(0, 3, (20,)))
    other_test = (torch.randn(20, 3) * 10, torch.randint(0, 3, (20,)))
    acc, adapted = few_shot_accuracy(trunk, train_split, test_split, 2, steps=5, lr=0.1, rng=np.random.default_rng(1))
    _, adapted_other = few_shot_accuracy(trunk, train_split, other_test, 2, steps=5, lr=0.1, rng=np.random.default_rng(1))
    for (name, p), q in zip(adapted.named_parameters(), adapted_other.parameters()):
        assert torch.equal(p, q), name  # a different test split changes nothing in the adaptation
    assert acc == pytest.approx(float((adapted(test_split[0]).argmax(1) == test_split[1]).float().mean()))
    assert trunk.weight.grad is None and not torch.equal(adapted[0].weight, trunk.weight)  # a copy was adapted
    head_only, _ = few_shot_accuracy(nn.Identity(), train_split, test_split, 2, 5, 0.1, np.random.default_rng(1))
    assert 0.0 <= head_only <= 1.0


def test_classification_episodes_remap_labels_and_bring_a_zero_head():
    features = torch.randn(40, 5)
    labels = torch.arange(40) % 4
    episodes = ClassificationEpisodes({"t": (features, labels)}, feature_dim=5, k_per_class=2, query_per_class=3)
    episode = episodes(np.random.default_rng(0))
    assert episode.support[0].shape == (8, 5) and episode.query[0].shape == (12, 5)
    assert sorted(episode.support[1].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert not set(map(tuple, episode.support[0].tolist())) & set(map(tuple, episode.query[0].tolist()))  # disjoint
    assert torch.count_nonzero(episode.head.weight) == 0 and episode.head.out_features == 4
    with pytest.raises(ValueError, match="fewer than k_per_class \\+ query_per_class = 20"):
        ClassificationEpisodes({"t": (features, labels)}, 5, 10, 10)
