"""Gradient aggregators: pinned values, properties, bad input, and the training-loop integration."""

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from scipy.optimize import minimize

from mtl_tutorial.aggregation import (
    AGGREGATORS,
    GradientAggregation,
    cagrad,
    cagrad_weights,
    equal_weighting,
    gradient_cosines,
    gram_matrix,
    mgda,
    mgda_weights,
    pcgrad,
    pcgrad_weights,
)
from mtl_tutorial.bench import aggregator_step_times
from mtl_tutorial.data import MultiTaskDataset, collate_multitask, multitask_loader
from mtl_tutorial.models import HardSharingModel
from mtl_tutorial.training import train

GRADS = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])  # the example: g1 · g2 = -22


def test_pinned_values_of_the_two_task_example():
    torch.testing.assert_close(pcgrad(GRADS), torch.tensor([0.5848, 3.8012, 3.8012]), atol=1e-4, rtol=0)
    direction, weights = mgda(GRADS)
    torch.testing.assert_close(weights, torch.tensor([0.6, 0.4]), atol=1e-6, rtol=0)
    torch.testing.assert_close(direction, torch.tensor([0.0, 1.0, 1.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(cagrad(GRADS, c=0.5), torch.tensor([0.1835, 1.2041, 1.2041]), atol=1e-4, rtol=0)
    torch.testing.assert_close(gradient_cosines(GRADS)[0, 1], torch.tensor(-22 / (18 * 38) ** 0.5, dtype=torch.float64))
    torch.testing.assert_close(equal_weighting(GRADS), torch.tensor([2.0, 2.0, 2.0]))


def test_every_aggregator_is_a_combination_given_by_the_gram_matrix():
    torch.manual_seed(0)
    grads = torch.randn(4, 50, dtype=torch.float64)
    gram = gram_matrix(grads)
    torch.testing.assert_close(pcgrad(grads, torch.Generator().manual_seed(3)),
                               pcgrad_weights(gram, torch.Generator().manual_seed(3)) @ grads)
    torch.testing.assert_close(mgda(grads)[0], mgda_weights(gram) @ grads)
    torch.testing.assert_close(cagrad(grads, c=0.4), cagrad_weights(gram, c=0.4) @ grads)
    # scaling every gradient by one factor leaves the weights unchanged
    torch.testing.assert_close(mgda_weights(gram_matrix(1e-4 * grads)), mgda_weights(gram), atol=1e-6, rtol=0)


def reference_pcgrad(grads, generator):
    """Algorithm 1 of Yu et al. with explicit vectors, the same random order as pcgrad_weights."""
    projected = []
    for i in range(len(grads)):
        g = grads[i].clone()
        others = [j for j in range(len(grads)) if j != i]
        for position in torch.randperm(len(grads) - 1, generator=generator).tolist():
            g_j = grads[others[position]]
            if g @ g_j < 0:
                g = g - (g @ g_j) / (g_j @ g_j) * g_j
        projected.append(g)
    return torch.stack(projected).sum(dim=0)


def test_pcgrad_matches_explicit_projections_for_three_tasks():
    grads = torch.tensor([[1.0, 0.0, 2.0], [-2.0, 1.0, -1.0], [0.5, -3.0, 1.0]], dtype=torch.float64)
    for seed in range(4):
        ours = pcgrad(grads, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(ours, reference_pcgrad(grads, torch.Generator().manual_seed(seed)))


def test_pcgrad_of_non_conflicting_gradients_is_their_sum():
    grads = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 3.0], [2.0, 0.0, 1.0]])
    torch.testing.assert_close(pcgrad(grads), grads.sum(dim=0))


def reference_min_norm(gram):
    """Exact min-norm point of the convex hull: the best KKT point over every support set."""
    best = None
    for size in range(1, len(gram) + 1):
        for support in itertools.combinations(range(len(gram)), size):
            sub = gram[np.ix_(support, support)]
            system = np.block([[2 * sub, np.ones((size, 1))], [np.ones((1, size)), np.zeros((1, 1))]])
            try:
                solution = np.linalg.solve(system, np.r_[np.zeros(size), 1.0])
            except np.linalg.LinAlgError:
                continue
            if (solution[:size] < -1e-12).any():
                continue
            w = np.zeros(len(gram))
            w[list(support)] = solution[:size]
            if best is None or w @ gram @ w < best @ gram @ best:
                best = w
    return best


@pytest.mark.parametrize("seed", range(5))
def test_mgda_direction_is_the_min_norm_point_for_three_tasks(seed):
    generator = torch.Generator().manual_seed(seed)
    grads = torch.randn(3, 6, generator=generator, dtype=torch.float64) * torch.tensor([[1.0], [2.0], [0.5]])
    direction, weights = mgda(grads)
    assert weights.min() >= 0 and weights.sum().item() == pytest.approx(1.0)
    exact = reference_min_norm(gram_matrix(grads).numpy())
    assert direction.norm().item() == pytest.approx(np.sqrt(exact @ gram_matrix(grads).numpy() @ exact), abs=1e-6)
    # and no point of a fine grid over the simplex is shorter
    a, b = np.meshgrid(np.linspace(0, 1, 201), np.linspace(0, 1, 201))
    keep = a + b <= 1
    grid = torch.from_numpy(np.stack([a[keep], b[keep], 1 - a[keep] - b[keep]], axis=1))
    assert direction.norm() <= (grid @ grads).norm(dim=1).min() + 1e-9


def test_mgda_edge_cases():
    opposite = torch.tensor([[1.0, 2.0], [-1.0, -2.0]])
    direction, weights = mgda(opposite)  # 0 is in the hull: a Pareto-stationary point
    torch.testing.assert_close(weights, torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(direction, torch.zeros(2))
    same = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    torch.testing.assert_close(mgda(same)[1], torch.tensor([0.5, 0.5]))
    longer = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # the shorter gradient is the min-norm point
    torch.testing.assert_close(mgda(longer)[1], torch.tensor([1.0, 0.0]))


def hard_gradients(num_tasks, kind, seed):
    """(T, P) float64 gradients of the kinds that defeat iterative solvers."""
    generator = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=generator, dtype=torch.float64)  # noqa: E731
    if kind == "ill-conditioned":  # row norms spread over four orders of magnitude
        return randn(num_tasks, 12) * torch.logspace(-2, 2, num_tasks, dtype=torch.float64)[:, None]
    if kind == "rank-deficient":  # T gradients in a 2-dimensional subspace
        return randn(num_tasks, 2) @ randn(2, 12)
    # nearly Pareto-stationary: the last gradient almost cancels the mean of the others
    others = randn(num_tasks - 1, 6)
    return torch.cat([others, -others.sum(0, keepdim=True) + 1e-6 * randn(1, 6)])


def slsqp_minimum(objective, num_tasks, starts=4):
    """The independent solver: scipy's SLSQP over the simplex from the centre and random starts."""
    rng = np.random.default_rng(0)
    best = np.inf
    for k in range(starts):
        start = np.full(num_tasks, 1 / num_tasks) if k == 0 else rng.dirichlet(np.ones(num_tasks))
        result = minimize(objective, start, method="SLSQP", bounds=[(0, 1)] * num_tasks,
                          constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
                          options={"ftol": 1e-15, "maxiter": 500})
        best = min(best, result.fun)
    return best


KINDS = ["ill-conditioned", "rank-deficient", "nearly Pareto-stationary"]


@pytest.mark.parametrize("num_tasks", range(3, 9))
@pytest.mark.parametrize("kind", KINDS)
def test_mgda_is_the_exact_min_norm_point(num_tasks, kind):
    for seed in range(2):
        gram = gram_matrix(hard_gradients(num_tasks, kind, seed))
        matrix = (gram / gram.diagonal().mean()).numpy()  # the rescaled Gram matrix: mean diagonal 1
        w = mgda_weights(gram).numpy()
        assert w.min() >= 0 and w.sum() == pytest.approx(1.0, abs=1e-12)
        frank_wolfe_gap = 2 * (w @ matrix @ w - (matrix @ w).min())
        assert frank_wolfe_gap <= 1e-10, f"gap {frank_wolfe_gap:.2e} for T = {num_tasks}, seed {seed}"
        assert w @ matrix @ w <= slsqp_minimum(lambda v: v @ matrix @ v, num_tasks) + 1e-10
        if num_tasks <= 6:  # and the exact optimum over every support set
            exact = reference_min_norm(matrix)
            assert w @ matrix @ w == pytest.approx(exact @ matrix @ exact, abs=1e-12)


@pytest.mark.parametrize("num_tasks", range(2, 9))
@pytest.mark.parametrize("kind", KINDS)
def test_cagrad_solves_its_inner_problem_exactly(num_tasks, kind):
    grads = hard_gradients(max(num_tasks, 3), kind, seed=num_tasks)[:num_tasks]
    gram = gram_matrix(grads)
    matrix = (gram / gram.diagonal().mean()).numpy()
    mean_dots = matrix.mean(axis=1)
    for c in (0.2, 0.5, 0.9):
        radius = c * np.sqrt(matrix.mean())
        alpha = cagrad_weights(gram, c).numpy()
        w = (alpha - 1 / num_tasks) / (alpha - 1 / num_tasks).sum()  # α = 1/T + radius w / ‖g_w‖
        objective = lambda v: v @ mean_dots + radius * np.sqrt(max(v @ matrix @ v, 0.0))  # noqa: E731
        gradient = mean_dots + radius * matrix @ w / np.sqrt(w @ matrix @ w)
        assert objective(w) - gradient.min() <= 1e-10  # Frank-Wolfe gap: F is convex
        assert objective(w) <= slsqp_minimum(objective, num_tasks) + 1e-10
        d = alpha @ grads.numpy()
        g0 = grads.mean(0).numpy()
        scale = float(grads.norm(dim=1).max())  # d - g0 cancels when g0 is tiny
        assert np.linalg.norm(d - g0) == pytest.approx(c * np.linalg.norm(g0), rel=1e-9, abs=1e-9 * scale)


@pytest.mark.parametrize("weights_of", [pcgrad_weights, mgda_weights, cagrad_weights])
def test_a_matrix_that_is_not_a_gram_matrix_is_rejected(weights_of):
    with pytest.raises(ValueError, match="gram is not symmetric"):
        weights_of(torch.tensor([[1.0, 0.9], [-0.9, 1.0]]))
    with pytest.raises(ValueError, match="negative eigenvalue"):
        weights_of(torch.tensor([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(TypeError, match="build it with gram_matrix"):
        weights_of([[1.0, 0.0], [0.0, 1.0]])
    # a Gram matrix computed in float32 is symmetric and PSD only up to rounding: accepted
    grads = torch.randn(4, 1000, generator=torch.Generator().manual_seed(0))
    weights_of(grads @ grads.T)


def test_cagrad_properties():
    grads = torch.tensor([[1.0, 0.0, 2.0], [-2.0, 1.0, -1.0], [0.5, -3.0, 1.0]], dtype=torch.float64)
    g0 = grads.mean(dim=0)
    torch.testing.assert_close(cagrad(grads, c=0.0), g0)  # c = 0: the average gradient
    for c in (0.25, 0.5, 0.9):
        d = cagrad(grads, c=c)
        # d stays on the sphere of radius c‖g0‖ around g0 ...
        assert (d - g0).norm().item() == pytest.approx(c * g0.norm().item(), rel=1e-6)
        # ... where it maximises the worst task's improvement min_t g_t · d (checked on a grid of the simplex)
        a, b = np.meshgrid(np.linspace(0, 1, 101), np.linspace(0, 1, 101))
        keep = a + b <= 1
        w = torch.from_numpy(np.stack([a[keep], b[keep], 1 - a[keep] - b[keep]], axis=1))
        g_w = w @ grads
        objective = g_w @ g0 + c * g0.norm() * g_w.norm(dim=1)
        w_ours = (cagrad_weights(gram_matrix(grads), c) - 1 / 3) / (c * g0.norm())
        w_ours = w_ours / w_ours.sum()
        ours = (w_ours @ grads) @ g0 + c * g0.norm() * (w_ours @ grads).norm()
        assert ours <= objective.min() + 1e-9
        assert (grads @ d).min() >= (grads @ g0).min() - 1e-9  # no worse for the worst-off task than g0


def test_cagrad_two_task_closed_form_matches_a_fine_search():
    generator = torch.Generator().manual_seed(1)
    a = torch.linspace(0, 1, 100001, dtype=torch.float64)
    for _ in range(8):
        grads = torch.randn(2, 4, generator=generator, dtype=torch.float64)
        c = float(torch.rand(1, generator=generator)) + 0.1
        g0 = grads.mean(dim=0)
        g_w = a[:, None] * grads[0] + (1 - a[:, None]) * grads[1]
        best = (g_w @ g0 + c * g0.norm() * g_w.norm(dim=1)).argmin()
        expected = g0 + c * g0.norm() / g_w[best].norm() * g_w[best]
        torch.testing.assert_close(cagrad(grads, c), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["pcgrad", "mgda", "cagrad", "equal"])
def test_bad_input_gets_a_clear_error(name):
    aggregate = AGGREGATORS[name]
    with pytest.raises(ValueError, match=r"shape \(T, P\)"):
        aggregate(torch.ones(3))
    with pytest.raises(ValueError, match=r"shape \(T, P\)"):
        aggregate(torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match="at least two tasks"):
        aggregate(torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"task row\(s\) \[1\] contain nan or inf"):
        aggregate(torch.tensor([[1.0, 2.0], [float("nan"), 0.0]]))
    with pytest.raises(TypeError, match="must be a tensor"):
        aggregate([[1.0, 2.0], [3.0, 4.0]])


def test_cagrad_rejects_a_negative_radius():
    with pytest.raises(ValueError, match="c must be finite and >= 0"):
        cagrad(GRADS, c=-1.0)


def two_task_setup(seed=0, batch_size=16):
    torch.manual_seed(seed)
    x = torch.randn(48, 3)
    data = {"a": (x, x.sum(1)), "b": (x, -x[:, 0] + x[:, 1])}  # b partly opposes a
    dataset = MultiTaskDataset(data)
    model = HardSharingModel(
        nn.Sequential(nn.Linear(3, 5), nn.Tanh()),
        {"a": nn.Sequential(nn.Linear(5, 1), nn.Flatten(0)), "b": nn.Sequential(nn.Linear(5, 1), nn.Flatten(0))},
    )
    batch = collate_multitask([dataset[i] for i in list(range(0, 8)) + list(range(48, 56))])
    loss_fns = {"a": nn.functional.mse_loss, "b": nn.functional.mse_loss}
    return model, dataset, batch, loss_fns


def task_losses(model, batch, loss_fns):
    out = model(batch.inputs, list(batch.tasks))
    return {task: loss_fns[task](o.outputs, batch.targets[o.positions]) for task, o in out.items()}


def per_task_gradients(model, batch, loss_fns):
    """(T, P) trunk gradients and each task's head gradients, by separate backward passes."""
    rows, heads = [], {}
    for task in ("a", "b"):
        model.zero_grad()
        task_losses(model, batch, loss_fns)[task].backward()
        rows.append(torch.cat([p.grad.flatten() for p in model.trunk.parameters()]))
        heads[task] = [p.grad.clone() for p in model.heads[task].parameters()]
    model.zero_grad()
    return torch.stack(rows), heads


@pytest.mark.parametrize("method", ["equal", "pcgrad", "mgda", "cagrad"])
def test_parameter_mode_writes_the_aggregated_trunk_gradient_and_each_heads_own(method):
    model, _, batch, loss_fns = two_task_setup()
    grads, heads = per_task_gradients(model, batch, loss_fns)
    expected = {"equal": grads.sum(0), "pcgrad": pcgrad(grads), "mgda": mgda(grads)[0],
                "cagrad": cagrad(grads, 0.5)}[method]
    aggregation = GradientAggregation(model, method)
    total, weights = aggregation(task_losses(model, batch, loss_fns), step=1)
    trunk = torch.cat([p.grad.flatten() for p in model.trunk.parameters()])
    torch.testing.assert_close(trunk, expected, atol=1e-6, rtol=1e-5)
    for task in ("a", "b"):
        for parameter, grad in zip(model.heads[task].parameters(), heads[task]):
            torch.testing.assert_close(parameter.grad, grad)
    assert set(weights) == {"a", "b"} and total.dim() == 0 and not total.requires_grad
    steps, cosines = aggregation.cosine_curve("a", "b")
    assert steps.tolist() == [1]
    assert cosines[0] == pytest.approx(float(gradient_cosines(grads)[0, 1]), abs=1e-6)


@pytest.mark.parametrize("mode", ["parameters", "representation"])
def test_the_task_gradients_go_through_the_reducer_it_is_handed_before_the_gram_matrix(mode):
    model, _, batch, loss_fns = two_task_setup()
    seen = []

    def mean_with_an_idle_rank(grads):  # the mean over 2 ranks, the other one's task gradients all 0
        seen.append(tuple(grads.shape))
        return grads / 2

    aggregation = GradientAggregation(model, "equal", mode=mode)
    reference = GradientAggregation(model, "equal", mode=mode)
    aggregation(task_losses(model, batch, loss_fns), step=1, reduce=mean_with_an_idle_rank)
    halved = [p.grad.clone() for p in model.trunk.parameters()]
    model.zero_grad()
    reference(task_losses(model, batch, loss_fns), step=1)
    assert seen == [(2, 20 if mode == "parameters" else 5)]  # (T, P): the trunk's 15 + 5 parameters; (T, H)
    if mode == "parameters":  # the trunk steps along the reduced gradients
        for grad, full in zip(halved, model.trunk.parameters()):
            torch.testing.assert_close(grad, full.grad / 2)
    torch.testing.assert_close(torch.tensor(aggregation.cosine_curve("a", "b")[1]),
                               torch.tensor(reference.cosine_curve("a", "b")[1]))


def test_representation_mode_back_propagates_the_weighted_feature_gradient():
    model, _, batch, loss_fns = two_task_setup()
    grads, heads = per_task_gradients(model, batch, loss_fns)
    aggregation = GradientAggregation(model, "mgda", mode="representation")
    losses = task_losses(model, batch, loss_fns)
    features = aggregation._features  # captured by the hook: (B, H)
    shifts = torch.stack([torch.autograd.grad(loss, features, retain_graph=True)[0].sum(0) for loss in losses.values()])
    _, weights = aggregation(losses, step=1)
    expected_weights = mgda_weights(gram_matrix(shifts))
    assert list(weights.values()) == pytest.approx(expected_weights.tolist(), abs=1e-6)
    trunk = torch.cat([p.grad.flatten() for p in model.trunk.parameters()])
    torch.testing.assert_close(trunk, expected_weights.float() @ grads, atol=1e-6, rtol=1e-5)
    for parameter, grad in zip(model.heads["b"].parameters(), heads["b"]):  # heads: their own gradient
        torch.testing.assert_close(parameter.grad, grad)
    aggregation.remove()
    model(batch.inputs, list(batch.tasks))
    assert aggregation._features is None


@pytest.mark.parametrize("mode", ["parameters", "representation"])
def test_training_with_an_aggregator_records_its_weights(mode):
    model, dataset, _, loss_fns = two_task_setup()
    loader = multitask_loader(dataset, batch_size=16, strategy="uniform", mixed=True, seed=0)
    aggregation = GradientAggregation(model, "mgda", mode=mode)
    history = train(model, loader, loss_fns, num_steps=6, lr=0.01, weighting=aggregation, progress=False)
    weights = np.array([history.task_weights["a"], history.task_weights["b"]])
    assert np.allclose(weights.sum(0), 1.0) and (weights >= 0).all()
    assert history.total_loss[-1] < history.total_loss[0] * 1.5
    assert len(aggregation.cosine_curve("a", "b")[0]) == 6


def test_gradient_aggregation_errors():
    model, _, batch, loss_fns = two_task_setup()
    with pytest.raises(ValueError, match="unknown method 'pcgard'; methods are: equal, pcgrad, mgda, cagrad"):
        GradientAggregation(model, "pcgard")
    with pytest.raises(ValueError, match="unknown mode 'params'"):
        GradientAggregation(model, "pcgrad", mode="params")
    with pytest.raises(TypeError, match="needs a model with a shared .trunk"):
        GradientAggregation(nn.Linear(2, 2), "pcgrad")
    aggregation = GradientAggregation(model, "pcgrad", mode="representation")
    with torch.no_grad():
        losses = task_losses(model, batch, loss_fns)
    with pytest.raises(RuntimeError, match="no shared features with a gradient"):
        aggregation(losses, step=1)
    with pytest.raises(ValueError, match="no step had gradients of both 'a' and 'b'"):
        aggregation.cosine_curve("a", "b")
    losses = task_losses(model, batch, loss_fns)
    losses["c"] = losses["a"]
    with pytest.raises(ValueError, match=r"loss for task\(s\) 'c', which the model .* heads are: a, b"):
        GradientAggregation(model, "pcgrad")(losses, step=1)


def test_step_times_are_reported_relative_to_equal_weighting():
    model, _, batch, loss_fns = two_task_setup()
    times = aggregator_step_times(model, batch, loss_fns, methods=("mgda",), num_steps=1, repeats=1)
    assert list(times) == ["equal", "mgda/parameters", "mgda/representation"]
    assert times["equal"]["ratio"] == 1.0
    assert all(entry["seconds"] > 0 for entry in times.values())


@pytest.mark.parametrize("mode", ["parameters", "representation"])
def test_norm_curve_records_each_tasks_gradient_length_before_the_weights(mode):
    model, _, batch, loss_fns = two_task_setup()
    grads, _ = per_task_gradients(model, batch, loss_fns)
    aggregation = GradientAggregation(model, "mgda", mode=mode)   # α ≠ 1: the norms must be of the raw g_t
    losses = task_losses(model, batch, loss_fns)
    if mode == "representation":
        features = aggregation._features
        grads = torch.stack([torch.autograd.grad(loss, features, retain_graph=True)[0].sum(0) for loss in losses.values()])
    aggregation(losses, step=3)
    for k, task in enumerate(("a", "b")):
        steps, norms = aggregation.norm_curve(task)
        assert steps.tolist() == [3]
        assert norms[0] == pytest.approx(float(grads[k].norm()), rel=1e-5)
    with pytest.raises(ValueError, match="no step had a gradient of task 'c'"):
        aggregation.norm_curve("c")
