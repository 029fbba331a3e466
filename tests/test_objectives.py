"""The multi-task objective: weighted sums, scalarisation sweeps, Pareto fronts."""

import math

import pytest
import torch

from mtl_tutorial.objectives import (
    SharedLinearRegression,
    check_scalar_losses,
    TwoQuadratics,
    fonseca_fleming,
    pareto_front,
    scalarization_sweep,
    supported_points,
    weighted_sum,
)


def test_weighted_sum_value_and_gradient():
    a, b = torch.tensor(2.0, requires_grad=True), torch.tensor(3.0, requires_grad=True)
    total = weighted_sum({"a": a, "b": b}, {"a": 0.5, "b": 2.0})
    assert total.item() == 0.5 * 2.0 + 2.0 * 3.0
    total.backward()
    assert (a.grad.item(), b.grad.item()) == (0.5, 2.0)


def test_weighted_sum_defaults_to_unit_weights():
    assert weighted_sum({"a": torch.tensor(2.0), "b": torch.tensor(3.0)}).item() == 5.0


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"a": 1.0}, "no weight for task 'b'"),
        ({"a": 1.0, "b": 1.0, "sentimnet": 1.0}, "unknown task 'sentimnet'; tasks are: a, b"),
        ({"a": -1.0, "b": 1.0}, "weight of task 'a' must be finite and >= 0"),
        ({"a": math.nan, "b": 1.0}, "weight of task 'a' must be finite"),
        ({"a": math.inf, "b": 1.0}, "weight of task 'a' must be finite"),
    ],
)
def test_weighted_sum_rejects_bad_weights(weights, message):
    with pytest.raises(ValueError, match=message):
        weighted_sum({"a": torch.tensor(1.0), "b": torch.tensor(1.0)}, weights)


def test_weighted_sum_rejects_unreduced_losses():
    with pytest.raises(ValueError, match=r"loss of task 'a' must be a 0-dim tensor, got \(3,\); reduce it first"):
        weighted_sum({"a": torch.ones(3)})
    with pytest.raises(ValueError, match="losses is empty"):
        weighted_sum({})


def test_check_scalar_losses_accepts_0_dim_tensors_only():
    check_scalar_losses({"a": torch.tensor(1.0), "b": torch.tensor(2.0)})
    with pytest.raises(ValueError, match=r"loss of task 'b' must be a 0-dim tensor, got \(1,\).*reduction='none'"):
        check_scalar_losses({"a": torch.tensor(1.0), "b": torch.ones(1)})  # one example, unreduced
    with pytest.raises(ValueError, match="loss of task 'a' must be a 0-dim tensor, got float"):
        check_scalar_losses({"a": 1.0})


def test_pareto_front_on_known_points():
    points = torch.tensor(
        [[0.0, 3.0], [1.0, 1.0], [3.0, 0.0], [2.0, 2.0], [1.0, 1.0], [1.0, 3.0], [0.5, 2.0]]
    )
    # (2, 2) is dominated by (1, 1); (1, 3) by (0, 3) and (1, 1); duplicates of (1, 1) both stay
    assert pareto_front(points).tolist() == [True, True, True, False, True, False, True]
    assert pareto_front(points, chunk_size=2).tolist() == pareto_front(points).tolist()


def test_pareto_front_single_point_and_shape_errors():
    assert pareto_front([[1.0, 2.0]]).tolist() == [True]
    with pytest.raises(ValueError, match=r"shape \(N, T\)"):
        pareto_front(torch.zeros(3))
    with pytest.raises(ValueError, match="nan or inf"):
        pareto_front([[0.0, math.nan]])


def test_sweep_matches_closed_form_joint_optimum():
    problem = TwoQuadratics([-1.0, 0.5], [1.0, -0.5], [[2.0, 0.0], [0.0, 0.5]], [[0.5, 0.3], [0.3, 1.0]])
    lambdas = torch.tensor([0.0, 0.3, 0.7, 1.0])
    sweep = scalarization_sweep(problem, lambdas, torch.zeros(1, 2), num_steps=400)
    expected = torch.stack([problem.joint_optimum(float(lam)) for lam in lambdas])
    torch.testing.assert_close(sweep.params, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(sweep.losses, problem(expected), atol=1e-6, rtol=0)
    torch.testing.assert_close(expected[[0, -1]], problem.optima.flip(0))  # λ = 0: task 2's optimum


def test_sweep_validates_inputs():
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        scalarization_sweep(fonseca_fleming, [1.5], torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"shape \(S, D\)"):
        scalarization_sweep(fonseca_fleming, [0.5], torch.zeros(2))


def test_weighted_sum_reaches_only_the_ends_of_a_nonconvex_front():
    starts = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    sweep = scalarization_sweep(fonseca_fleming, torch.linspace(0, 1, 9), starts, num_steps=300)
    # every joint optimum has one task nearly solved: the middle of the front, (0.63, 0.63), is never found
    assert bool((sweep.losses.min(dim=1).values < 0.01).all())
    assert fonseca_fleming(torch.zeros(2)).tolist() == pytest.approx([1 - math.exp(-1)] * 2)


def test_two_quadratics_rejects_indefinite_curvature():
    with pytest.raises(ValueError, match="positive definite"):
        TwoQuadratics([0.0, 0.0], [1.0, 1.0], [[1.0, 0.0], [0.0, -1.0]], [[1.0, 0.0], [0.0, 1.0]])


def test_supported_points_exclude_a_point_above_the_chord():
    # (1.2, 1.2) is Pareto optimal but lies above the chord from (0, 2) to (2, 0): no λ picks it
    points = torch.tensor([[0.0, 2.0], [1.2, 1.2], [2.0, 0.0], [0.9, 0.9], [3.0, 3.0]])
    assert pareto_front(points[:3]).tolist() == [True, True, True]
    assert supported_points(points[:3]).tolist() == [True, False, True]
    assert supported_points(points).tolist() == [True, False, True, True, False]
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        supported_points(torch.zeros(3, 3))


def test_shared_linear_regression_losses_and_closed_form_optimum():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 2.0]])  # task 1: θ = (1, 0); task 2: θ = (0, 2), both exact
    problem = SharedLinearRegression(x, y)
    assert problem(torch.tensor([1.0, 0.0])).tolist() == [0.0, 2.0]  # task 2 errors: 1, 4, 1
    torch.testing.assert_close(problem.joint_optimum(1.0), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(problem.joint_optimum(0.25), torch.tensor([0.25, 1.5]))  # mixed targets fit exactly
    sweep = scalarization_sweep(problem, [0.25], torch.zeros(1, 2), num_steps=500)
    torch.testing.assert_close(sweep.params[0], torch.tensor([0.25, 1.5]), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="same N"):
        SharedLinearRegression(x, y[:2])
