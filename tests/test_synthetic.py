"""The MMoE synthetic generator: correlation of the linear parts, construction, seeding, errors."""

from __future__ import annotations

import math

import pytest
import torch

from mtl_tutorial.data import make_correlated_tasks


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a, b]))[0, 1].item()


@pytest.mark.parametrize("p", [-0.5, 0.0, 0.5, 0.9])
def test_linear_parts_correlate_by_p(p: float) -> None:
    data = make_correlated_tasks(20_000, correlation=p, seed=1)
    linear = data.linear_parts()
    # the standard error of a sample correlation is about (1 - p^2) / sqrt(N) < 0.01 here
    assert _pearson(linear[:, 0], linear[:, 1]) == pytest.approx(p, abs=0.03)


def test_paper_construction_of_the_weights() -> None:
    p, c = 0.3, 2.0
    w = make_correlated_tasks(10, correlation=p, c=c, input_dim=8).weights.double()
    assert w.shape == (2, 8)
    torch.testing.assert_close(w.norm(dim=1), torch.full((2,), c, dtype=torch.float64))
    u1 = w[0] / c
    u2 = (w[1] / c - p * u1) / math.sqrt(1 - p * p)
    # u1, u2 orthonormal <=> w2 = c (p u1 + sqrt(1 - p^2) u2) with the paper's u1, u2
    u = torch.stack([u1, u2])
    torch.testing.assert_close(u @ u.T, torch.eye(2, dtype=torch.float64))


def test_three_tasks_hub_construction() -> None:
    p = 0.6
    data = make_correlated_tasks(30_000, num_tasks=3, correlation=p, seed=2)
    expected = torch.tensor([[1.0, p, p], [p, 1.0, p * p], [p, p * p, 1.0]])
    torch.testing.assert_close(data.linear_correlation(), expected, atol=1e-5, rtol=0)
    measured = torch.corrcoef(data.linear_parts().T)
    torch.testing.assert_close(measured, expected, atol=0.03, rtol=0)


def test_labels_are_linear_plus_shared_sinusoids() -> None:
    data = make_correlated_tasks(500, num_tasks=3, correlation=0.4, num_sin=5, noise_std=0.0, seed=3)
    assert data.alphas.shape == data.betas.shape == (5,)
    linear = data.linear_parts()
    waves = torch.sin(linear.unsqueeze(-1) * data.alphas + data.betas).sum(-1)
    torch.testing.assert_close(data.y, linear + waves, atol=1e-4, rtol=1e-4)


def test_noise_has_the_requested_std() -> None:
    noisy = make_correlated_tasks(20_000, noise_std=0.5, seed=4)
    clean = make_correlated_tasks(20_000, noise_std=0.0, seed=4)
    assert (noisy.y - clean.y).std().item() == pytest.approx(0.5, rel=0.03)


def test_label_correlation_grows_with_p() -> None:
    corr = [
        _pearson(*make_correlated_tasks(5000, correlation=p, seed=5).y.T) for p in (0.0, 0.5, 0.9)
    ]
    assert corr[0] < corr[1] < corr[2]


def test_same_seed_same_numbers_other_seed_other_numbers() -> None:
    a = make_correlated_tasks(50, num_tasks=3, seed=7)
    b = make_correlated_tasks(50, num_tasks=3, seed=7)
    c = make_correlated_tasks(50, num_tasks=3, seed=8)
    assert a.x.dtype == a.y.dtype == torch.float32
    assert a.x.shape == (50, 100) and a.y.shape == (50, 3)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.weights, b.weights)
    assert not torch.equal(a.x, c.x) and not torch.equal(a.weights, c.weights)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"correlation": 1.5}, "correlation must lie in"),
        ({"correlation": -1.01}, "correlation must lie in"),
        ({"num_tasks": 1}, "num_tasks must be an int >= 2"),
        ({"num_samples": 0}, "num_samples must be a positive int"),
        ({"num_samples": 2.5}, "num_samples must be a positive int"),
        ({"input_dim": 0}, "input_dim must be a positive int"),
        ({"input_dim": 2, "num_tasks": 3}, "input_dim=2 is too small"),
        ({"c": 0.0}, "c \\(the scale"),
        ({"noise_std": -1.0}, "noise_std must be >= 0"),
        ({"num_sin": -1}, "num_sin must be a non-negative int"),
        ({"seed": -1}, "seed must be a non-negative int"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_correlated_tasks(**{"num_samples": 10, **kwargs})
