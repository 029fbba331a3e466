"""compare(): the one-line equality checker the notebooks print."""

import numpy as np
import pytest
import torch

from mtl_tutorial.checks import compare


def test_exact_close_and_different_verdicts(capsys):
    x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    assert compare("same", x, x.clone()) == 0.0
    assert compare("close", x, x + torch.tensor([0.0, 3e-7, -1e-6])) == pytest.approx(1e-6, rel=1e-3)
    assert compare("off", x, x + 0.5) == pytest.approx(0.5)
    assert capsys.readouterr().out.splitlines() == [
        "same: exact",
        "close: close (max abs diff 1.0e-06)",
        "off: DIFFERENT (max abs diff 5.0e-01)",
    ]


def test_atol_sets_the_boundary_and_inputs_may_be_arrays_or_numbers(capsys):
    compare("loose", np.array([1.0, 2.0]), torch.tensor([1.0, 2.01]), atol=0.1)
    compare("scalar", 1.5, 1.5)
    compare("mixed dtypes", torch.tensor([1, 2]), torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert capsys.readouterr().out.splitlines() == [
        "loose: close (max abs diff 1.0e-02)",
        "scalar: exact",
        "mixed dtypes: exact",
    ]


def test_nan_is_different_and_shapes_must_match(capsys):
    assert np.isnan(compare("nan", torch.tensor([float("nan")]), torch.tensor([1.0])))
    assert capsys.readouterr().out == "nan: DIFFERENT (max abs diff nan)\n"
    with pytest.raises(ValueError, match=r"logits: shapes differ, ours \(2, 3\) vs reference \(3, 2\)"):
        compare("logits", torch.zeros(2, 3), torch.zeros(3, 2))
