"""compare(): the one-line equality checker the notebooks print; the command lines' argument types."""

import argparse
import re

import numpy as np
import pytest
import torch

from mtl_tutorial.checks import compare, float_argument, int_argument


def test_verdicts_name_the_tolerance_and_return_the_difference(capsys):
    x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    assert compare("same", x, x.clone()) == 0.0
    assert compare("close", x, x + torch.tensor([0.0, 3e-7, -1e-6])) == pytest.approx(1e-6, rel=1e-3)
    assert compare("off", x, x + 0.5) == pytest.approx(0.5)
    assert capsys.readouterr().out.splitlines() == [
        "same: equal within 1e-05",
        "close: equal within 1e-05",
        "off: DIFFERENT (max abs diff 5.0e-01 > atol 1e-05)",
    ]


def test_the_verdict_of_a_difference_within_atol_does_not_depend_on_its_size(capsys):
    """Threads change the last bits of a matmul: 0, 1e-8 and 9e-6 must all print the same line."""
    x = torch.zeros(4, dtype=torch.float64)
    for noise in (0.0, 1e-8, 9e-6, 1e-5):
        compare("logits", x + noise, x)
    assert set(capsys.readouterr().out.splitlines()) == {"logits: equal within 1e-05"}


def test_atol_sets_the_boundary_and_inputs_may_be_arrays_or_numbers(capsys):
    compare("loose", np.array([1.0, 2.0]), torch.tensor([1.0, 2.01]), atol=0.1)
    compare("tight", np.array([1.0, 2.0]), torch.tensor([1.0, 2.01]), atol=1e-3)
    compare("scalar", 1.5, 1.5)
    compare("mixed dtypes", torch.tensor([1, 2]), torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert capsys.readouterr().out.splitlines() == [
        "loose: equal within 0.1",
        "tight: DIFFERENT (max abs diff 1.0e-02 > atol 0.001)",
        "scalar: equal within 1e-05",
        "mixed dtypes: equal within 1e-05",
    ]


def test_an_expected_difference_prints_a_verdict_without_the_number(capsys):
    x = torch.zeros(3)
    assert compare("B ≠ 0 changes the outputs", x + 0.14, x, expect="different") == pytest.approx(0.14)
    assert compare("B ≠ 0 changes the outputs", x + 0.02, x, atol=1e-3, expect="different") == pytest.approx(0.02)
    compare("forgot to train", x + 2e-6, x, expect="different")
    assert capsys.readouterr().out.splitlines() == [
        "B ≠ 0 changes the outputs: different by more than 1e-05, as expected",
        "B ≠ 0 changes the outputs: different by more than 0.001, as expected",
        "forgot to train: EQUAL within 1e-05 (max abs diff 2.0e-06), but a difference was expected",
    ]
    with pytest.raises(ValueError, match="expect must be 'equal' or 'different', got 'same'"):
        compare("x", x, x, expect="same")


def test_nan_is_not_comparable_and_shapes_must_match(capsys):
    assert np.isnan(compare("nan", torch.tensor([float("nan")]), torch.tensor([1.0])))
    compare("nan, expecting a difference", torch.tensor([float("nan")]), torch.tensor([1.0]), expect="different")
    compare("inf", torch.tensor([float("inf")]), torch.tensor([1.0]))
    assert capsys.readouterr().out.splitlines() == [
        "nan: NOT COMPARABLE (max abs diff nan: a NaN or an infinity in ours or the reference)",
        "nan, expecting a difference: NOT COMPARABLE (max abs diff nan: a NaN or an infinity in ours or the reference)",
        "inf: DIFFERENT (max abs diff inf > atol 1e-05)",
    ]
    with pytest.raises(ValueError, match=r"logits: shapes differ, ours \(2, 3\) vs reference \(3, 2\)"):
        compare("logits", torch.zeros(2, 3), torch.zeros(3, 2))


def test_check_count_and_is_real_number_refuse_bools_and_name_the_argument():
    import numpy as np

    from mtl_tutorial.checks import check_count, is_real_number

    check_count("steps", 3)
    with pytest.raises(TypeError, match="steps must be an int >= 1, got bool True"):
        check_count("steps", True)
    with pytest.raises(ValueError, match="k must be >= 2, got 1"):
        check_count("k", 1, minimum=2)
    assert is_real_number(0.5) and is_real_number(np.float32(2)) and not is_real_number(True) and not is_real_number("1")


def test_the_command_line_argument_types_refuse_what_they_cannot_use_by_value():
    steps = int_argument(1)
    assert steps("3") == 3
    for text in ["0", "-2", "2.5", "ten", ""]:
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(f"{text!r} is not a whole number >= 1")):
            steps(text)
    assert int_argument(0)("0") == 0
    lr = float_argument(0.0, low_open=True)
    assert lr("1e-3") == 1e-3
    for text in ["0", "-1", "nan", "inf", "x"]:
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(f"{text!r} is not a finite number in (0, inf)")):
            lr(text)
    correlation = float_argument(-1.0, 1.0)
    assert correlation("-1") == -1.0 and correlation("1") == 1.0
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape("'1.01' is not a finite number in [-1, 1]")):
        correlation("1.01")


@pytest.mark.parametrize(("argv", "message"), [
    (["lora", "--steps", "0"], "argument --steps: '0' is not a whole number >= 1"),
    (["serve", "--batch-size", "-1"], "argument --batch-size: '-1' is not a whole number >= 1"),
    (["lora", "--seq-len", "1"], "argument --seq-len: '1' is not a whole number >= 2"),
    (["lora", "--warmup", "-1"], "argument --warmup: '-1' is not a whole number >= 0"),
])
def test_the_bench_command_refuses_bad_settings_before_timing_anything(argv, message, capsys):
    from mtl_tutorial.bench import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
