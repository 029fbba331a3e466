"""The grader's probe machinery: encoding results, judging them outside the kernel, the kernel cell, limits."""

import json

import numpy as np
import pytest
import torch

from mtl_tutorial.grading.probes import Probe, differences, encode, judge, probe_cell, read_result, result_file
from mtl_tutorial.grading.runner import cap_outputs
from mtl_tutorial.grading.sandbox import Limits


def test_encode_keeps_types_shapes_and_non_finite_values_as_json():
    value = [torch.tensor([[1.0, float("nan")]]), np.array([2, 3]), 4, 2.5, float("inf"), {"a": None}, "x", True]
    encoded = json.loads(json.dumps(encode(value)))
    tensor, array, integer, number, infinite, mapping, text, flag = encoded["list"]
    assert tensor == {"tensor": "float32", "shape": [1, 2], "data": ["1.0", "nan"]}
    assert array["shape"] == [2] and array["data"] == ["2.0", "3.0"]
    assert (integer, number, infinite) == (4, {"float": "2.5"}, {"float": "inf"})
    assert (mapping, text, flag) == ({"dict": [["a", None]]}, "x", True)
    assert encode(object()) == {"unsupported": "object"}


@pytest.mark.parametrize("learner, reason", [
    (torch.tensor([1.0, 2.0]), ""),
    (torch.tensor([1.0, 2.0 + 1e-7]), ""),
    (torch.tensor([1.0, 2.01]), "the result differs from the reference at flat position 1"),
    (torch.tensor([[1.0, 2.0]]), "the result has shape (1, 2), expected (2,)"),
    (3.0, "the result should be a tensor of shape (2,), got a number"),
    (torch.tensor([1.0, float("nan")]), "the result differs from the reference at flat position 1"),
])
def test_differences_name_where_without_showing_the_reference(learner, reason):
    got = differences(encode(torch.tensor([1.0, 2.0])), encode(learner))
    assert got == reason
    assert "2.0" not in got and "1.0" not in got, "a reason never shows a reference value"


def test_differences_walk_lists_dicts_and_integers():
    reference = encode([{"w": torch.zeros(2)}, 7, None])
    assert differences(reference, encode([{"w": torch.zeros(2)}, 7, None])) == ""
    assert differences(reference, encode([{"w": torch.zeros(2)}, 8, None])) == "case 2 differs from the reference"
    assert differences(reference, encode([{"v": torch.zeros(2)}, 7, None])) == "case 1 has keys v, expected w"
    assert differences(reference, encode([{"w": torch.ones(2)}, 7, None])) == (
        "case 1['w'] differs from the reference at flat position 0")
    assert differences(reference, encode([{"w": torch.zeros(2)}, 7])) == "the result has 2 entries, expected 3"
    assert differences(encode(7), encode(7.0)) == "", "an integer given as a float is the same count"
    assert differences(encode(7), encode(True)) == "the result should be an integer, got a bool"
    assert differences(encode(float("nan")), encode(float("nan"))) == ""


def test_judge_reads_errors_missing_records_and_refuses_a_broken_reference():
    probe = Probe("f", "result = f(seed)")
    reference = {"result": encode(torch.ones(3))}
    assert judge(reference, {"result": encode(torch.ones(3))}, probe) == ""
    assert judge(reference, {"error": "ValueError: no"}, probe) == "f raised ValueError: no on the grader's inputs"
    assert judge(reference, None, probe) == "the grader's check of f did not run"
    assert judge(reference, {"error": "KeyboardInterrupt: "}, probe) == (
        "f did not finish on the grader's inputs within the time limit per cell")
    assert judge(reference, {"result": encode(torch.ones(2))}, probe).startswith("f on the grader's inputs: the result has shape")
    with pytest.raises(RuntimeError, match="the instructor source failed its own probe of f"):
        judge({"error": "NameError: f"}, reference, probe)


def test_the_probe_cell_runs_in_a_copy_of_the_namespace_and_records_errors(tmp_path):
    names = {"double": lambda x: 2 * x, "result": "the learner's own"}
    exec(probe_cell("a01_x", Probe("double", "import torch\nresult = double(torch.arange(3) + seed)"), 5,
                    str(tmp_path / "a.json")), names)
    assert read_result(tmp_path / "a.json") == {"result": encode(torch.tensor([10, 12, 14]))}
    assert names["result"] == "the learner's own", "the probe cannot overwrite the learner's names"
    exec(probe_cell("a01_y", Probe("missing", "result = missing(seed)"), 5, str(tmp_path / "b.json")), names)
    assert read_result(tmp_path / "b.json") == {"error": "NameError: name 'missing' is not defined"}


def test_read_result_ignores_what_is_missing_oversized_or_malformed(tmp_path):
    assert read_result(tmp_path / "none.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text('{"something": 1}')
    (tmp_path / "big.json").write_text('{"result": "' + "x" * 3_000_000 + '"}')
    assert [read_result(tmp_path / f"{n}.json") for n in ("bad", "other", "big")] == [None, None, None]
    assert result_file("a06_pcgrad") == "probe_a06_pcgrad.json"
    with pytest.raises(ValueError, match="letters, digits and underscores"):
        result_file("../etc/passwd")


def test_cap_outputs_keeps_the_first_bytes_of_a_huge_stream():
    cell = {"outputs": [{"output_type": "stream", "name": "stdout", "text": "x" * 500_000},
                        {"output_type": "stream", "name": "stdout", "text": "after"}]}
    assert cap_outputs(cell, limit=1000)
    assert len(cell["outputs"]) == 1 and cell["outputs"][0]["text"].endswith("[output cut by the grader]\n")
    small = {"outputs": [{"output_type": "stream", "name": "stdout", "text": "ok"}]}
    assert not cap_outputs(small, limit=1000) and small["outputs"][0]["text"] == "ok"


def test_limits_must_be_positive_integers():
    with pytest.raises(ValueError, match="Limits.wall_s must be a positive integer, got 0"):
        Limits(wall_s=0)
