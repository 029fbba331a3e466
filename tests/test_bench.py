"""The benchmarks run and report their timings (ratios are measured, not asserted)."""

import pytest
from transformers import BertConfig, BertModel

from mtl_tutorial.bench import forward_latency, lora_step_time, main, solver_time_table, solver_times, step_time_table


@pytest.fixture(scope="module")
def tiny_bert():
    config = BertConfig(vocab_size=1100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32)
    return BertModel(config).eval()


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_lora_step_time_reports_both_times_and_their_ratio(tiny_bert):
    result = lora_step_time(batch_size=2, seq_len=8, r=2, num_steps=3, warmup=1, backbone=tiny_bert)
    assert result["ours_s"] > 0 and result["peft_s"] > 0
    assert result["ratio"] == pytest.approx(result["ours_s"] / result["peft_s"])
    assert result["trainable_ours"] == result["trainable_peft"] == 2 * 2 * 2 * (32 + 32)
    assert (result["batch_size"], result["seq_len"], result["r"], result["num_steps"]) == (2, 8, 2, 3)


def test_lora_step_time_validates_step_counts(tiny_bert):
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        lora_step_time(num_steps=0, backbone=tiny_bert)


def test_main_prints_the_comparison(monkeypatch, capsys):
    fake = {"ours_s": 0.9, "peft_s": 1.0, "ratio": 0.9, "trainable_ours": 73728, "trainable_peft": 73728,
            "batch_size": 32, "seq_len": 64, "r": 8, "num_steps": 10}
    monkeypatch.setattr("mtl_tutorial.bench.lora_step_time", lambda **kwargs: fake)
    assert main(["lora"]) == 0
    out = capsys.readouterr().out
    assert "ours     900.0 ms" in out and "peft    1000.0 ms" in out and "ours / peft = 0.900" in out


def test_forward_latency_is_positive_and_restores_the_mode(tiny_bert):
    import torch

    tiny_bert.train()
    inputs = {"input_ids": torch.randint(0, 1100, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    assert forward_latency(tiny_bert, inputs, repeats=3, warmup=1) > 0
    assert tiny_bert.training
    tiny_bert.eval()
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        forward_latency(tiny_bert, inputs, repeats=0)


def test_main_aggregators_prints_the_table(monkeypatch, capsys):
    times = {"equal": {"seconds": 0.1, "ratio": 1.0}, "pcgrad/parameters": {"seconds": 0.25, "ratio": 2.5}}
    monkeypatch.setattr("mtl_tutorial.bench.text_benchmark_setup",
                        lambda **kwargs: (None, None, {"a": None, "b": None}))
    monkeypatch.setattr("mtl_tutorial.bench.aggregator_step_times", lambda *args, **kwargs: times)
    assert main(["aggregators", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 tasks" in out and "pcgrad/parameters" in out and "2.50" in out


def test_solver_times_cover_each_solver_and_task_count_beside_a_training_pass():
    times = solver_times(num_tasks=(2, 3), calls=2)
    assert set(times) == {"pcgrad", "mgda", "cagrad", "forward_backward"}
    assert all(list(times[name]) == [2, 3] and min(times[name].values()) > 0 for name in ("pcgrad", "mgda", "cagrad"))
    assert times["forward_backward"] > 0
    table = solver_time_table(times)
    assert "T = 2" in table and "T = 3" in table and "forward + backward" in table
    assert f"{times['mgda'][3] * 1e6:.1f}" in table


def test_main_solvers_prints_the_table(monkeypatch, capsys):
    times = {"pcgrad": {2: 1e-5}, "mgda": {2: 2e-5}, "cagrad": {2: 3e-5}, "forward_backward": 1e-3}
    monkeypatch.setattr("mtl_tutorial.bench.solver_times", lambda: times)
    assert main(["solvers"]) == 0
    out = capsys.readouterr().out
    assert "mgda" in out and "20.0" in out and "1000.0 µs" in out


def test_step_time_table_shows_ms_ratios_and_goals_as_goals_not_checks():
    times = {"equal": {"seconds": 0.010, "ratio": 1.0}, "mgda/parameters": {"seconds": 0.025, "ratio": 2.5},
             "mgda/representation": {"seconds": 0.018, "ratio": 1.8}}
    lines = step_time_table(times, num_tasks=4).splitlines()
    assert lines[0].split() == ["configuration", "ms/step", "×", "equal", "goal*"]
    assert lines[1].split() == ["equal", "10.0", "1.00"]
    assert lines[2].split() == ["mgda/parameters", "25.0", "2.50", "≤", "4.5"]
    assert lines[3].split() == ["mgda/representation", "18.0", "1.80", "≤", "1.5"]
    assert lines[4].startswith("* the cost goal on a real trunk") and "not a check" in lines[4]
