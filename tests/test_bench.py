"""The benchmarks run and report their timings (ratios are measured, not asserted)."""

import math

import numpy as np
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


def test_training_step_times_on_a_tiny_bert():
    import copy

    import torch

    from mtl_tutorial.bench import training_step_times
    from mtl_tutorial.prefix import apply_prefix

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    torch.manual_seed(0)
    full = BertModel(config).eval()
    prefixed = apply_prefix(copy.deepcopy(full), 2)
    input_ids, mask = torch.randint(50, (2, 5)), torch.ones(2, 5, dtype=torch.long)
    times = training_step_times({"prefix": prefixed, "full": full}, input_ids, mask, num_steps=2, warmup=1)
    assert set(times) == {"prefix", "full"} and all(t > 0 for t in times.values())
    assert not full.training and not prefixed.training
    with pytest.raises(ValueError, match="no trainable parameters"):
        training_step_times({"frozen": copy.deepcopy(full).requires_grad_(False)}, input_ids, mask)


# --- chapter 10: step clock, step memory, serving ----------------------------------------------


def test_step_clock_times_the_interval_between_optimizer_steps():
    import time

    import torch

    from mtl_tutorial.bench import StepClock

    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    with StepClock(optimizer) as clock:
        for pause in (0.05, 0.01, 0.01, 0.01):
            time.sleep(pause)
            optimizer.step()
    optimizer.step()  # after the block: not recorded
    assert len(clock.seconds) == 4 and clock.seconds[0] >= 0.05
    assert 0.01 <= clock.median() < 0.04  # the slow first step is left out
    with StepClock(optimizer) as idle:
        pass
    with pytest.raises(ValueError, match="no optimizer step"):
        idle.median()


def test_state_bytes_counts_parameters_and_buffers_and_shared_tensors_once():
    import torch

    from mtl_tutorial.bench import state_bytes

    assert state_bytes(torch.nn.Linear(3, 4)) == (12 + 4) * 4
    assert state_bytes(torch.nn.BatchNorm1d(5)) == 4 * (5 + 5 + 5 + 5) + 8  # weight, bias, running mean/var; count
    tied = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False))
    tied[1].weight = tied[0].weight
    assert state_bytes(tied) == 40 * 4


def test_training_step_memory_sees_gradients_adam_state_and_activations():
    import torch

    from mtl_tutorial.bench import training_step_memory
    from mtl_tutorial.data import MultiTaskBatch
    from mtl_tutorial.models import HardSharingModel

    torch.manual_seed(0)
    model = HardSharingModel(torch.nn.Sequential(torch.nn.Linear(500, 1000), torch.nn.ReLU()), {"a": torch.nn.Linear(1000, 3)})
    trunk_bytes = 4 * (500 * 1000 + 1000)

    def batch(n):
        return MultiTaskBatch(("a",) * n, torch.arange(n), torch.randn(n, 500), torch.zeros(n, dtype=torch.long))

    loss_fns = {"a": torch.nn.functional.cross_entropy}
    small = training_step_memory(model, batch(8), loss_fns)
    assert small["measure"] == "cpu torch profiler"
    assert small["bytes"] >= 4 * trunk_bytes  # weights, gradients and Adam's two moments of the trunk
    assert small["bytes"] < 8 * trunk_bytes  # (plus Adam's temporaries of the parameters' size)
    large = training_step_memory(model, batch(2048), loss_fns)
    assert large["bytes"] - small["bytes"] > 2040 * 1000 * 4  # the trunk's activations grow with the batch
    model.trunk.requires_grad_(False)
    frozen = training_step_memory(model, batch(8), loss_fns)
    assert trunk_bytes < frozen["bytes"] < 1.5 * trunk_bytes  # the weights, but no gradient or Adam state
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        training_step_memory(model, batch(8), loss_fns)


def test_training_step_memory_steps_the_frozen_layers_as_the_run_it_measures():
    """A run measured before it trains (showdown) must draw the random numbers its own steps draw:
    dropout in a frozen block draws them only in "train" mode, and a measurement that skipped them
    shifted every later dropout mask (chapter 07's study runs stopped reproducing)."""
    import torch

    from mtl_tutorial.bench import training_step_memory
    from mtl_tutorial.data import MultiTaskBatch
    from mtl_tutorial.models import HardSharingModel

    torch.manual_seed(0)
    frozen_block = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Dropout(0.5)).requires_grad_(False)
    model = HardSharingModel(frozen_block, {"a": torch.nn.Linear(8, 3)})
    batch = MultiTaskBatch(("a",) * 4, torch.arange(4), torch.randn(4, 6), torch.zeros(4, dtype=torch.long))
    loss_fns = {"a": torch.nn.functional.cross_entropy}
    states = {}
    for mode in ("train", "eval"):
        torch.manual_seed(1)
        training_step_memory(model, batch, loss_fns, frozen_modules=mode)
        states[mode] = torch.rand(3)   # where the random stream stands after the measurement
    torch.manual_seed(1)
    torch.nn.Dropout(0.5).train()(torch.ones(4, 8))   # the draws of one step with the frozen dropout on
    assert torch.equal(states["train"], torch.rand(3))
    assert not torch.equal(states["train"], states["eval"])


@pytest.fixture(scope="module")
def serving_model():
    from mtl_tutorial.bench import serving_setup

    return serving_setup(3, r=2, max_length=16, num_texts=24)


def test_serving_setup_and_the_swapping_server_serve_each_task_exactly(serving_model):
    import torch

    from mtl_tutorial.bench.serving import _SwappingServer
    from mtl_tutorial.lora import lora_layers

    model, texts = serving_model
    assert model.tasks == ("task0", "task1", "task2") and len(texts) == 24
    assert all(B.abs().sum() > 0 for layer in lora_layers(model.trunk).values() for B in layer.B.values())
    swapping = _SwappingServer(model)
    with torch.no_grad():
        for task in ("task1", "task0", "task2", "task1"):  # swap back and forth
            torch.testing.assert_close(swapping(texts[:5], task), model(texts[:5], task), atol=1e-5, rtol=1e-5)


def test_serving_throughput_reports_every_set_up_and_its_weights(serving_model):
    from mtl_tutorial.bench import serving_table, serving_throughput, state_bytes

    model, texts = serving_model
    result = serving_throughput(model, texts, batch_size=6, num_batches=1, rounds=2)
    assert list(result) == ["mixed batch", "merged per task", "swapping", "ceiling"]
    assert all(entry["examples_per_s"] > 0 and entry["rounds"] == 2 for entry in result.values())
    assert [result["ceiling"][key] for key in ("ratio_to_ceiling", "ratio_low", "ratio_high")] == [1.0, 1.0, 1.0]
    for name in ("mixed batch", "merged per task", "swapping"):
        assert 0 < result[name]["ratio_low"] <= result[name]["ratio_to_ceiling"] <= result[name]["ratio_high"]
    one_copy = result["ceiling"]["memory_bytes"]
    assert result["merged per task"]["memory_bytes"] == 3 * one_copy  # a merged backbone per task
    assert result["mixed batch"]["memory_bytes"] == state_bytes(model) < 1.1 * one_copy
    assert one_copy < result["swapping"]["memory_bytes"] < 1.2 * one_copy
    # a batch split by task pads each part to its own longest text: never more tokens than the whole batch
    assert result["merged per task"]["padded_tokens"] == result["swapping"]["padded_tokens"]
    assert 0 < result["swapping"]["padded_tokens"] <= result["mixed batch"]["padded_tokens"] == result["ceiling"]["padded_tokens"]
    assert 0 < result["swapping"]["rewrite_share"] < 1   # T = 3 tasks: each round rewrites the weights for each part
    assert "rewrite_share" not in result["mixed batch"]
    lines = serving_table({3: result}).splitlines()
    assert lines[-2].startswith("swapping: rewriting the weights took ") and lines[-2].endswith("at T = 3 (median of the rounds)")
    assert lines[0].split()[:6] == ["T", "set-up", "examples/s", "×", "ceiling", "[95"]
    assert lines[4].split()[1:2] == ["ceiling"] and "1.000 [1.000, 1.000]" in lines[4] and "reference" in lines[4]
    assert "median of 2 timed rounds" in lines[-1] and "MB = 10^6 bytes" in lines[-1]
    one_round = serving_throughput(model, texts, batch_size=6, num_batches=1, rounds=1)
    assert math.isnan(one_round["swapping"]["ratio_low"]) and "no interval (1 round)" in serving_table({3: one_round})
    with pytest.raises(ValueError, match="must be >= 1"):
        serving_throughput(model, texts, batch_size=0)


def test_paired_speed_ratio_is_the_geometric_mean_over_rounds_with_a_t_interval_on_the_log_scale():
    from mtl_tutorial.bench.serving import paired_speed_ratio
    from mtl_tutorial.evidence import mean_interval

    # the machine slows down in round 2 for both: the ratio of each round is what counts, exactly 1/2 here
    ratio, low, high = paired_speed_ratio([2.0, 4.0, 2.0], [1.0, 2.0, 1.0])
    assert (ratio, low, high) == (pytest.approx(0.5), pytest.approx(0.5), pytest.approx(0.5))
    seconds, reference = [1.0, 1.0, 1.0, 1.0], [0.8, 1.25, 1.0, 1.1]
    ratio, low, high = paired_speed_ratio(seconds, reference)
    logs = mean_interval(np.log(reference))
    assert ratio == pytest.approx(math.exp(logs.mean)) and ratio == pytest.approx((0.8 * 1.25 * 1.1) ** 0.25)
    assert (low, high) == (pytest.approx(math.exp(logs.low)), pytest.approx(math.exp(logs.high)))
    assert low < 1 < high   # an interval over 1: no measurable difference
    one = paired_speed_ratio([2.0], [1.0])
    assert one[0] == 0.5 and math.isnan(one[1]) and math.isnan(one[2])
    with pytest.raises(ValueError, match="same number"):
        paired_speed_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="must be > 0"):
        paired_speed_ratio([1.0, 0.0], [1.0, 1.0])


def test_serving_table_words_follow_the_intervals():
    from mtl_tutorial.bench.serving import ratio_verdict, serving_table

    def entry(ratio, low, high):
        return {"examples_per_s": 100.0 * ratio, "ratio_to_ceiling": ratio, "ratio_low": low, "ratio_high": high,
                "rounds": 6, "padded_tokens": 1_000, "memory_bytes": 2_000_000}

    result = {"mixed batch": entry(0.9, 0.85, 0.95), "merged per task": entry(1.05, 0.97, 1.13),
              "swapping": entry(1.2, 1.1, 1.3), "ceiling": entry(1.0, 1.0, 1.0)}
    assert [ratio_verdict(e) for e in result.values()] == ["slower", "no measurable difference", "faster", "reference"]
    lines = serving_table({8: result}).splitlines()
    assert lines[1].split()[:6] == ["8", "mixed", "batch", "90.0", "0.900", "[0.850,"]
    assert lines[1].split()[-2:] == ["1,000", "2.0"]   # padded tokens, MB of weights (10^6 bytes)
    assert "no measurable difference" in lines[2] and "faster" in lines[3]
    assert "median of 6 timed rounds" in lines[-1]


def test_ddp_throughput_times_one_and_two_processes_on_the_same_global_batches():
    from mtl_tutorial.bench import ddp_table, ddp_throughput

    results = ddp_throughput(batch_sizes=(8, 16), world_sizes=(1, 2), num_steps=2, warmup=1, hidden=(8,))
    assert list(results) == [8, 16] and all(list(by_world) == [1, 2] for by_world in results.values())
    for batch_size, by_world in results.items():
        assert by_world[1]["speedup"] == 1.0
        for entry in by_world.values():
            assert entry["examples_per_s"] == pytest.approx(batch_size / entry["seconds_per_step"])
        assert by_world[2]["speedup"] == pytest.approx(by_world[2]["examples_per_s"] / by_world[1]["examples_per_s"])
    lines = ddp_table(results).splitlines()
    assert lines[0].split() == ["global", "batch", "processes", "ms/step", "examples/s", "×", "1", "process"]
    assert lines[4].split()[:2] == ["16", "2"] and lines[4].split()[-1] == f"{results[16][2]['speedup']:.2f}"
    with pytest.raises(ValueError, match="warmup must be >= 1"):
        ddp_throughput(warmup=0)


def test_precision_step_times_compare_bf16_with_float32_steps():
    import torch

    from mtl_tutorial.bench import precision_step_times, precision_table

    times = precision_step_times(torch.device("cpu"), batch_size=16, num_steps=2, warmup=1, hidden=(8,))
    assert list(times) == ["fp32", "bf16"] and times["fp32"]["ratio"] == 1.0
    assert times["bf16"]["ratio"] == pytest.approx(times["bf16"]["seconds_per_step"] / times["fp32"]["seconds_per_step"])
    lines = precision_table(times).splitlines()
    assert lines[0].split() == ["precision", "ms/step", "×", "fp32"]
    assert lines[2].split() == ["bf16", f"{times['bf16']['seconds_per_step'] * 1000:.2f}", f"{times['bf16']['ratio']:.2f}"]


def test_main_ddp_prints_the_table_with_the_load_and_says_when_there_is_no_gpu(monkeypatch, capsys):
    import torch

    seen = {}

    def fake(batch_sizes, num_steps):
        seen["batch_sizes"], seen["num_steps"] = batch_sizes, num_steps
        return {b: {1: {"seconds_per_step": 0.01, "examples_per_s": b / 0.01, "speedup": 1.0},
                    2: {"seconds_per_step": 0.02, "examples_per_s": b / 0.02, "speedup": 0.5}} for b in batch_sizes}

    monkeypatch.setattr("mtl_tutorial.bench.ddp_throughput", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["ddp", "--steps", "4"]) == 0
    out = capsys.readouterr().out
    assert seen == {"batch_sizes": (32, 256, 1024), "num_steps": 4}
    assert "load average" in out and "1 torch thread per process" in out
    assert "0.50" in out and "no CUDA GPU" in out


def test_main_serve_prints_the_table_with_paired_ratios_and_the_ratios_at_8_tasks(monkeypatch, capsys):
    def fake_throughput(model, texts, batch_size, num_batches):
        speeds = {"mixed batch": (90.0, 0.85, 0.95), "merged per task": (100.0, 0.9, 1.1), "swapping": (60.0, 0.55, 0.65),
                  "ceiling": (100.0, 1.0, 1.0)}
        return {name: {"examples_per_s": speed, "ratio_to_ceiling": speed / 100, "ratio_low": low, "ratio_high": high,
                       "rounds": 5, "padded_tokens": 640, "memory_bytes": 2**20}
                for name, (speed, low, high) in speeds.items()}

    monkeypatch.setattr("mtl_tutorial.bench.load_backbone", lambda: ("backbone", "tokenizer"))
    monkeypatch.setattr("mtl_tutorial.bench.serving_setup", lambda num_tasks, **kwargs: (num_tasks, ["text"]))
    monkeypatch.setattr("mtl_tutorial.bench.serving_throughput", fake_throughput)
    assert main(["serve", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 batches per round" in out and out.count("ceiling") >= 4
    table = [line for line in out.splitlines() if line.lstrip().startswith("8 ")]
    assert [line.split()[1] for line in table] == ["mixed", "merged", "swapping", "ceiling"]
    assert "0.900 [0.850, 0.950]" in table[0] and "slower" in table[0]
    assert "1.000 [0.900, 1.100]" in table[1] and "no measurable difference" in table[1]
    assert "median of 5 timed rounds" in out
    assert ("T = 8, paired by round: mixed batch / ceiling = 0.90 [0.85, 0.95] (goal ≥ 0.80, met when the whole interval "
            "is); mixed batch / swapping = 1.50 (goal > 1); mixed batch / merged per task = 0.90") in out
