"""Meta-learning: the inner loop, Reptile and first-order MAML against hand computations; few-shot data flow."""

import numpy as np
import pytest
import torch
from torch import nn

from mtl_tutorial.meta import (
    ClassificationEpisodes, Episode, SinusoidTasks, adapt, few_shot_accuracy, few_shot_support, fomaml_gradient,
    fomaml_step, inner_loop, meta_train, reptile_step, zero_head,
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


# --- inputs meta-learning cannot serve: a clear error where they enter -----------------------------


def episode(support=(A, B_SUPPORT), query=(A, B_QUERY), loss_fn=half_squared_error, head=None):
    return Episode(support, query, loss_fn, head)


def two_class_split(n=6, width=3):
    return torch.randn(n, width), torch.arange(n) % 2


def few_shot(train=None, test=None, k=1, model=None, rng=None):
    """few_shot_accuracy of a head on 3 inputs, 2 steps, with valid defaults for what a case leaves out."""
    return few_shot_accuracy(model or nn.Identity(), train or two_class_split(), test or two_class_split(4), k, 2, 0.1,
                             np.random.default_rng(0) if rng is None else rng)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: reptile_step(linear_model([0.5, -0.5]), [episode()], 1, 0.05, meta_lr=-1.0), ValueError,
         "meta_lr must be a finite number > 0, got -1.0: .* moves θ away from the adapted weights"),
        (lambda: reptile_step(linear_model([0.5, -0.5]), [episode()], 1, 0.05, meta_lr=float("nan")),
         ValueError, "meta_lr must be a finite number > 0"),
        (lambda: meta_train(nn.Linear(1, 1), SinusoidTasks(), 1, method="reptile", meta_lr=-0.1, progress=False),
         ValueError, "meta_lr must be a finite number > 0"),
        (lambda: meta_train(nn.Linear(1, 1), SinusoidTasks(), 1, method="fomaml", meta_lr=-0.1, progress=False),
         ValueError, "meta_lr must be a finite number > 0"),
        (lambda: reptile_step(linear_model([0.5, -0.5]), episode(), 1, 0.05, 0.5),
         TypeError, "episodes must be a list of Episode, got Episode; .*\\[episode\\]"),
        (lambda: reptile_step(linear_model([0.5, -0.5]), [], 1, 0.05, 0.5), ValueError, "at least one episode"),
        (lambda: fomaml_gradient(linear_model([0.5, -0.5]), [((A, B_SUPPORT), (A, B_QUERY), half_squared_error)], 1, 0.05), TypeError,
         "episode 0 is a tuple, not an Episode"),
        (lambda: fomaml_gradient(linear_model([0.5, -0.5]), [episode(query=(A, B_QUERY[:2]))], 1, 0.05), ValueError,
         "the query set of episode 0 has 3 inputs but 2 targets"),
        (lambda: reptile_step(linear_model([0.5, -0.5]), [episode(support=(A[:0], B_SUPPORT[:0]))], 1, 0.05, 0.5), ValueError,
         "the support set of episode 0 has no examples"),
        (lambda: reptile_step(linear_model([0.5, -0.5]), [episode()], 2.5, 0.05, 0.5),
         TypeError, "the inner loop needs an int number of steps .* got float 2.5"),
        (lambda: reptile_step(linear_model([0.5, -0.5]), [episode()], True, 0.05, 0.5), TypeError, "got bool True"),
        (lambda: inner_loop(linear_model([0.5, -0.5]), half_squared_error, (A, B_SUPPORT), 1, float("inf")),
         ValueError, "steps >= 0 and lr > 0"),
        (lambda: inner_loop(linear_model([0.5, -0.5]), half_squared_error, (A, B_SUPPORT), 1, "0.1"),
         TypeError, "a number lr, got int 1 and str '0.1'"),
        (lambda: inner_loop(linear_model([0.5, -0.5]), lambda o, t: (o - t) ** 2, (A, B_SUPPORT), 1, 0.1), ValueError,
         "loss_fn must return a scalar \\(0-dim tensor\\), got \\(3, 1\\)"),
        (lambda: inner_loop(linear_model([0.5, -0.5]), half_squared_error, (A, B_SUPPORT), 1, 0.1, params={"w": torch.zeros(1, 2)}), ValueError,
         r"params must name every parameter of the network and nothing else: missing \['weight'\], unknown \['w'\]"),
        (lambda: adapt(nn.Identity(), (A, B_SUPPORT), half_squared_error, 1, 0.1),
         ValueError, "the network has no parameters to adapt \\(Identity\\); give the episode a head"),
        (lambda: adapt(nn.Linear(2, 1), (A, B_SUPPORT), half_squared_error, 1, 0.1, head="linear"),
         TypeError, "head must be an nn.Module or None, got str"),
        (lambda: fomaml_step(linear_model([0.5, -0.5]), [episode()], 1, 0.05, 0.01),
         TypeError, "optimizer must be a torch optimizer over model.parameters\\(\\), got float"),
        (lambda: fomaml_step(linear_model([0.5, -0.5]), [episode()], 1, 0.05, torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)), ValueError,
         "the optimizer holds none of model's parameters, so its step would leave the model unchanged"),
        (lambda: meta_train(nn.Linear(1, 1), [episode()], 1, progress=False),
         TypeError, "sample_episode must be a function rng -> Episode"),
        (lambda: meta_train(nn.Linear(1, 1), SinusoidTasks(), 2.5, progress=False),
         TypeError, "num_steps must be an int >= 1, got float"),
        (lambda: meta_train(nn.Linear(1, 1), SinusoidTasks(), 1, meta_batch_size=0, progress=False),
         ValueError, "meta_batch_size must be >= 1, got 0"),
        (lambda: meta_train(nn.Linear(1, 1), SinusoidTasks(), 1, seed=-1, progress=False),
         ValueError, "seed must be an int >= 0, got -1"),
        (lambda: SinusoidTasks(k_shot=2.5), TypeError, "k_shot must be an int >= 1, got float"),
        (lambda: SinusoidTasks(query_size=0), ValueError, "query_size must be >= 1, got 0"),
        (lambda: SinusoidTasks()(0),
         TypeError, "rng must be a numpy Generator, got int; e.g. np.random.default_rng\\(seed\\)"),
    ],
)
def test_meta_steps_refuse_what_they_cannot_serve(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: few_shot_support(torch.tensor([0, 0, 1, 1]), 0, np.random.default_rng(0)),
         ValueError, "k_per_class must be >= 1, got 0"),
        (lambda: few_shot_support(torch.tensor([0, 0, 1, 1]), True, np.random.default_rng(0)),
         TypeError, "k_per_class must be an int >= 1, got bool"),
        (lambda: few_shot_support(torch.tensor([], dtype=torch.long), 1, np.random.default_rng(0)),
         ValueError, "labels must be a non-empty \\(N,\\) tensor"),
        (lambda: few_shot_support(torch.eye(4, dtype=torch.long), 1, np.random.default_rng(0)),
         ValueError, "got shape \\(4, 4\\)"),
        (lambda: few_shot(k=0), ValueError, "k_per_class must be >= 1, got 0"),
        (lambda: few_shot(test=(torch.randn(0, 3), torch.zeros(0, dtype=torch.long))), ValueError, "test_split has no examples"),
        (lambda: few_shot(train=(torch.randn(6, 3), torch.tensor([0.0, 1.0] * 3))), TypeError,
         "the train_split labels must be integer class ids, got torch.float32; .*labels.long\\(\\)"),
        (lambda: few_shot(test=(torch.randn(4, 3), torch.eye(2, dtype=torch.long).repeat(2, 1))), ValueError,
         "the test_split labels must be one class id per example.*argmax"),
        (lambda: few_shot(model=nn.Flatten(0), train=two_class_split(width=1), test=two_class_split(4, width=1)), ValueError,
         "model must map inputs \\(N, ...\\) to features \\(N, H\\), got \\(1,\\)"),
        (lambda: few_shot(rng=0), TypeError, "rng must be a numpy Generator"),
        (lambda: ClassificationEpisodes({"t": two_class_split(8)}, 3, 0, 2),
         ValueError, "k_per_class must be >= 1, got 0"),
        (lambda: ClassificationEpisodes({"t": two_class_split(8)}, 3, 2, 0),
         ValueError, "query_per_class must be >= 1, got 0"),
        (lambda: ClassificationEpisodes({"t": two_class_split(8)}, 0, 2, 2),
         ValueError, "feature_dim must be >= 1, got 0"),
        (lambda: ClassificationEpisodes({"t": (torch.randn(8, 3), torch.zeros(8, dtype=torch.long))}, 3, 2, 2), ValueError,
         "task 't' has a single class; a few-shot episode needs at least 2 classes"),
        (lambda: ClassificationEpisodes({"t": (torch.randn(8, 3), torch.arange(8) % 2 - 1)}, 3, 2, 2),
         ValueError, "must be class ids >= 0, got -1"),
        (lambda: ClassificationEpisodes({"t": (torch.randn(5, 3), torch.arange(8) % 2)}, 3, 2, 2),
         ValueError, "task 't' has 5 inputs but 8 targets"),
        (lambda: ClassificationEpisodes({"t": (torch.randn(8, 3), [0, 1] * 4)}, 3, 2, 2),
         TypeError, r"the inputs and labels of task 't' must be tensors \(inputs \(N, ...\), labels \(N,\)\), got Tensor and list"),
        (lambda: few_shot(train=(["a text"] * 6, torch.arange(6) % 2)),
         TypeError, "the inputs and labels of train_split must be tensors .* got list and Tensor; e.g. frozen features"),
        (lambda: ClassificationEpisodes([two_class_split(8)], 3, 2, 2),
         TypeError, "tasks must be a dict \\{task: \\(inputs, labels\\)\\}, got list"),
        (lambda: zero_head(4, 0), ValueError, "num_classes must be >= 1, got 0"),
        (lambda: zero_head(-1, 2), ValueError, "feature_dim must be >= 1, got -1"),
    ],
)
def test_few_shot_evaluation_refuses_what_it_cannot_serve(call, error, message):
    with pytest.raises(error, match=message):
        call()
