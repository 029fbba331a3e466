"""Data-parallel training: two gloo ranks on the CPU end where one process ends, step for step.

One ``run_local`` of 2 ranks (module fixture) runs every scenario; each test compares a part of
what the ranks returned with a single-process run on the same global batches.
"""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from mtl_tutorial import distributed
from mtl_tutorial.aggregation import GradientAggregation
from mtl_tutorial.data import MultiTaskBatchSampler, MultiTaskDataset, multitask_loader
from mtl_tutorial.distributed.__main__ import main
from mtl_tutorial.models import HardSharingModel, mlp
from mtl_tutorial.training import PRECISIONS, evaluate, mean_squared_error, train
from mtl_tutorial.weighting import GradNorm, UncertaintyWeighting

NUM_STEPS = 20
RUNS = {  # name -> (weighting, mixed batches)
    "equal, single-task batches": ("equal", False),
    "equal, mixed batches": ("equal", True),
    "uncertainty": ("uncertainty", True),
    "GradNorm": ("gradnorm", True),
    "PCGrad": ("pcgrad", True),
    "MGDA at the representation": ("mgda-representation", True),
}


def regression_data():
    torch.manual_seed(0)
    x = torch.randn(40, 5)
    return {"a": (x, x.sum(1)), "b": (x, x[:, 1] - x[:, 0]), "c": (x, x[:, 2] * x[:, 3])}


def train_run(name, world_size=1, rank=0):
    """One scenario of RUNS on this rank's shard: (History, model and weighting parameters after training).

    SGD, not Adam: Adam's step barely depends on the gradients' scale, so a sum over ranks where a
    mean belongs would go unnoticed. Mixed batches of 7 (shards of 4 and 3 examples, a task often
    missing from one shard); single-task batches of 8. A rank other than 0 starts from other
    parameters: DDP (model) and broadcast_parameters (weighting) must hand it rank 0's.
    """
    kind, mixed = RUNS[name]
    data = regression_data()
    torch.manual_seed(1)
    model = HardSharingModel(mlp(5, 8), {task: nn.Sequential(nn.Linear(8, 1), nn.Flatten(0)) for task in data})
    sampling = dict(replacement=True, num_batches=NUM_STEPS) if mixed else {}
    loader = multitask_loader(MultiTaskDataset(data), 7 if mixed else 8, strategy="uniform", mixed=mixed, seed=0,
                              num_replicas=world_size, rank=rank, **sampling)
    weighting = {
        "equal": lambda: None,
        "uncertainty": lambda: UncertaintyWeighting(list(data)),
        "gradnorm": lambda: GradNorm(list(data)),
        "pcgrad": lambda: GradientAggregation(model, "pcgrad"),
        "mgda-representation": lambda: GradientAggregation(model, "mgda", mode="representation"),
    }[kind]()
    parameters = list(model.parameters()) + (list(weighting.parameters()) if isinstance(weighting, nn.Module) else [])
    if rank != 0:
        with torch.no_grad():
            for parameter in parameters:
                parameter.add_(1.0)
    history = train(
        model, loader, {task: nn.functional.mse_loss for task in data}, num_steps=NUM_STEPS, weighting=weighting,
        optimizer=torch.optim.SGD(parameters, lr=0.05), progress=False, eval_every=10,
        eval_fn=lambda m: evaluate(m, data, {"mse": mean_squared_error}),
    )
    return history, [p.detach().clone() for p in parameters]


def on_each_rank():
    """What every rank of the fixture's run_local computes and returns."""
    r = distributed.rank()
    result = {"rank": r, "world_size": distributed.world_size()}
    result["sum"] = distributed.all_reduce_sum(torch.tensor([r + 1.0])).item()
    result["mean"] = distributed.all_reduce_mean(torch.tensor([r + 1.0])).item()

    both, only_rank_1, neither = (nn.Parameter(torch.zeros(2)) for _ in range(3))
    both.grad = torch.full((2,), r + 1.0)
    if r == 1:
        only_rank_1.grad = torch.full((2,), 4.0)
    distributed.average_gradients([both, only_rank_1, neither])
    result["averaged"] = (both.grad.tolist(), only_rank_1.grad.tolist(), neither.grad)

    value = nn.Parameter(torch.tensor([float(r) + 5.0]))
    distributed.broadcast_parameters([value])
    result["broadcast"] = value.item()

    # rank 0 holds global positions 0, 2, 4 of the batch (tasks a, a, b); rank 1 positions 1, 3 (c, a)
    s = torch.tensor(1.0, requires_grad=True)
    shard, losses = (("a", "a", "b"), {"a": 1.0 * s, "b": 2.0 * s}) if r == 0 else (("c", "a"), {"c": 3.0 * s, "a": 4.0 * s})
    combined, values = distributed.global_task_losses(losses, shard, ["a", "b", "c"])
    result["global"] = {
        "order": list(combined), "values": values,
        "loss_values": {t: loss.item() for t, loss in combined.items()},
        "grads": {t: torch.autograd.grad(loss, s, retain_graph=True)[0].item() for t, loss in combined.items()},
    }
    result["runs"] = {name: train_run(name, distributed.world_size(), r) for name in RUNS}
    return result


@pytest.fixture(scope="module")
def ranks():
    return distributed.run_local(on_each_rank, 2, threads_per_process=1)


@pytest.fixture(scope="module")
def single_process():
    return {name: train_run(name) for name in RUNS}


def test_run_local_returns_each_ranks_result_and_the_collectives_sum_mean_and_broadcast(ranks):
    assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]
    assert [r["sum"] for r in ranks] == [3.0, 3.0]  # 1 + 2
    assert [r["mean"] for r in ranks] == [1.5, 1.5]
    assert [r["broadcast"] for r in ranks] == [5.0, 5.0]  # rank 0's value


def test_average_gradients_counts_a_missing_gradient_as_zero_and_keeps_none_where_no_rank_has_one(ranks):
    for r in ranks:
        assert r["averaged"] == ([1.5, 1.5], [2.0, 2.0], None)


def test_global_task_losses_give_every_rank_the_global_means_in_global_order_and_a_share_of_the_gradient(ranks):
    # N_a = 3, L_a = (2·1 + 1·4) / 3 = 2; L_b = 2; L_c = 3; first examples at positions a 0, c 1, b 4
    for r in ranks:
        assert r["global"]["order"] == ["a", "c", "b"]
        assert r["global"]["values"] == pytest.approx({"a": 2.0, "b": 2.0, "c": 3.0}, abs=1e-12)
        assert r["global"]["loss_values"] == pytest.approx({"a": 2.0, "b": 2.0, "c": 3.0}, abs=1e-6)
    # gradient (W n_tr / N_t) ∂L_tr/∂s: rank 0 a 2·2/3·1, b 2·1·2, c absent: 0; rank 1 a 2·1/3·4, c 2·1·3, b 0
    assert ranks[0]["global"]["grads"] == pytest.approx({"a": 4 / 3, "b": 4.0, "c": 0.0})
    assert ranks[1]["global"]["grads"] == pytest.approx({"a": 8 / 3, "b": 0.0, "c": 6.0})
    mean = {t: (ranks[0]["global"]["grads"][t] + ranks[1]["global"]["grads"][t]) / 2 for t in "abc"}
    assert mean == pytest.approx({"a": 2.0, "b": 2.0, "c": 3.0})  # ∂L_t/∂s of the whole batch


@pytest.mark.parametrize("name", list(RUNS))
def test_two_ranks_end_with_the_parameters_and_the_history_of_one_process(ranks, single_process, name):
    (history_0, parameters_0), (history_1, parameters_1) = ranks[0]["runs"][name], ranks[1]["runs"][name]
    history, parameters = single_process[name]
    assert all(torch.equal(p0, p1) for p0, p1 in zip(parameters_0, parameters_1)), "the ranks disagree"
    assert max(float((p0 - p).abs().max()) for p0, p in zip(parameters_0, parameters)) <= 1e-6
    assert history_0.steps == history.steps and history_0.eval_steps == history.eval_steps == [10, 20]
    for task in history.tasks:
        for table in ("losses", "task_weights"):
            np.testing.assert_allclose(getattr(history_0, table)[task], getattr(history, table)[task], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(history_0.total_loss, history.total_loss, rtol=1e-5, atol=1e-6)
    for metric, values in history.metrics.items():
        np.testing.assert_allclose(history_0.metrics[metric], values, rtol=1e-5, atol=1e-6)
    assert str(history_1) == str(history_0)  # every rank records the same global numbers


def test_the_runs_train_and_learned_task_weights_move_and_agree(ranks, single_process):
    # the runs learn (the last evaluation beats the first), so the comparisons above compare training
    for name, (history, _) in single_process.items():
        assert history.metrics["a/mse"][-1] < history.metrics["a/mse"][0], name
    for name in ("uncertainty", "GradNorm"):  # the weighting's parameter is the last one
        own_0, own_1, own = ranks[0]["runs"][name][1][-1], ranks[1]["runs"][name][1][-1], single_process[name][1][-1]
        assert torch.equal(own_0, own_1) and float(own.abs().max()) > 1e-3
        torch.testing.assert_close(own_0, own, rtol=0, atol=1e-6)


def test_sampler_shards_are_disjoint_halves_of_the_same_global_batches():
    dataset = MultiTaskDataset(regression_data())
    for mixed in (False, True):
        whole = list(MultiTaskBatchSampler(dataset, 8, strategy="uniform", mixed=mixed, seed=3))
        shards = [list(MultiTaskBatchSampler(dataset, 8, strategy="uniform", mixed=mixed, seed=3, num_replicas=3, rank=r))
                  for r in range(3)]
        assert all(len(shard) == len(whole) for shard in shards)
        for k, batch in enumerate(whole):
            assert [shard[k] for shard in shards] == [batch[0::3], batch[1::3], batch[2::3]]
            if not mixed:  # one task per step on every rank
                assert len({dataset.locate(i)[0] for shard in shards for i in shard[k]}) == 1


def test_sampler_says_when_a_batch_cannot_give_every_rank_an_example():
    dataset = MultiTaskDataset(regression_data())  # 40 examples per task
    with pytest.raises(ValueError, match="batch_size=2 is smaller than num_replicas=4"):
        MultiTaskBatchSampler(dataset, 2, num_replicas=4)
    with pytest.raises(ValueError, match=r"task 'a' has 40 examples, so its last batch \(batch_size=13\) holds 1"):
        MultiTaskBatchSampler(dataset, 13, num_replicas=2)
    with pytest.raises(ValueError, match="the dataset has 120 examples, so its last batch"):
        MultiTaskBatchSampler(dataset, 17, mixed=True, num_replicas=2)
    MultiTaskBatchSampler(dataset, 13, num_replicas=2, replacement=True, num_batches=5)  # full batches: fine
    with pytest.raises(ValueError, match=r"rank must be an int in 0\.\.1"):
        MultiTaskBatchSampler(dataset, 8, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="num_replicas"):
        MultiTaskBatchSampler(dataset, 8, num_replicas=0)


def test_in_one_process_the_helpers_change_nothing():
    loss = torch.tensor(2.0, requires_grad=True) * 1.5
    assert distributed.world_size() == 1 and distributed.rank() == 0
    tensor = torch.ones(3)
    assert distributed.all_reduce_sum(tensor) is tensor and distributed.all_reduce_mean(tensor) is tensor
    combined, values = distributed.global_task_losses({"b": loss}, ("b", "b"), ["a", "b"])
    assert values == {"b": 3.0} and list(combined) == ["b"]
    assert torch.autograd.grad(combined["b"], loss)[0].item() == 1.0
    with pytest.raises(ValueError, match="no task loss"):
        distributed.global_task_losses({}, (), ["a"])


def test_init_distributed_without_torchrun_joins_nothing(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("MTL_TUTORIAL_DEVICE", "cpu")
    assert distributed.init_distributed() == torch.device("cpu")
    assert not torch.distributed.is_initialized()


def fail_on_rank_1():
    if distributed.rank() == 1:
        raise ValueError("rank 1 cannot go on")
    return "rank 0 is done"


def test_an_exception_in_one_rank_is_raised_by_run_local():
    with pytest.raises(Exception, match="rank 1 cannot go on"):
        distributed.run_local(fail_on_rank_1, 2)


def test_run_local_refuses_what_a_new_process_cannot_import():
    with pytest.raises(ValueError, match="define it at the top level of a .py module"):
        distributed.run_local(lambda: 0, 2)
    with pytest.raises(ValueError, match="world_size must be a positive int"):
        distributed.run_local(on_each_rank, 0)


def test_correlated_tasks_setup_is_the_same_for_the_same_seed():
    model, train_data, test_data, loss_fns = distributed.correlated_tasks_setup(num_train=32, num_test=8, hidden=(6,))
    again, *_ = distributed.correlated_tasks_setup(num_train=32, num_test=8, hidden=(6,))
    assert list(loss_fns) == ["task1", "task2"] == list(train_data) == list(model.heads)
    assert train_data["task1"][0].shape == (32, 100) and test_data["task2"][1].shape == (8,)
    assert torch.equal(train_data["task1"][0], train_data["task2"][0])  # the tasks share their inputs
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))
    assert model(test_data["task1"][0], "task1").shape == (8,)


def test_precision_is_checked_and_bf16_runs_the_forward_pass_in_bfloat16_on_the_cpu():
    assert PRECISIONS == ("fp32", "bf16", "fp16")
    runs = {}
    for precision in ("fp32", "bf16"):
        model, train_data, _, loss_fns = distributed.correlated_tasks_setup(num_train=64, num_test=8, hidden=(16,))
        dtypes = []
        model.trunk.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
        loader = multitask_loader(MultiTaskDataset(train_data), 16, mixed=True, seed=0)
        runs[precision] = train(model, loader, loss_fns, num_steps=8, lr=0.01, progress=False, precision=precision)
        assert set(dtypes) == {torch.float32 if precision == "fp32" else torch.bfloat16}
        assert all(p.dtype == torch.float32 for p in model.parameters())  # parameters stay float32
    np.testing.assert_allclose(runs["bf16"].total_loss, runs["fp32"].total_loss, rtol=0.05)
    model, train_data, _, loss_fns = distributed.correlated_tasks_setup(num_train=64, num_test=8, hidden=(16,))
    loader = multitask_loader(MultiTaskDataset(train_data), 16, seed=0)
    with pytest.raises(ValueError, match="unknown precision 'float16'; precisions are: fp32, bf16, fp16"):
        train(model, loader, loss_fns, num_steps=1, precision="float16")
    with pytest.raises(ValueError, match="precision='fp16' needs a CUDA GPU.*on cpu use precision='bf16'"):
        train(model, loader, loss_fns, num_steps=1, precision="fp16", device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 with a GradScaler needs CUDA")
def test_fp16_on_cuda_trains_with_a_scaler_and_refuses_a_weighting_that_writes_gradients():
    model, train_data, _, loss_fns = distributed.correlated_tasks_setup(num_train=64, num_test=8, hidden=(16,))
    loader = multitask_loader(MultiTaskDataset(train_data), 16, mixed=True, seed=0)
    history = train(model, loader, loss_fns, num_steps=8, lr=0.01, progress=False, precision="fp16", device="cuda")
    assert all(math.isfinite(v) for v in history.total_loss)
    with pytest.raises(ValueError, match="this weighting wrote gradients itself"):
        train(model, loader, loss_fns, num_steps=1, weighting=GradNorm(list(loss_fns)), precision="fp16", device="cuda")


def test_the_entry_point_under_torchrun_matches_one_process(tmp_path):
    arguments = ["--steps", "12", "--batch-size", "8", "--weighting", "uncertainty", "--mixed"]
    assert main([*arguments, "--output", str(tmp_path / "one.json")]) == 0
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "mtl_tutorial.distributed", *arguments, "--output", str(tmp_path / "two.json")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("2 process(es), backend gloo, device cpu; global batch 8 (4 per process)") == 1
    assert result.stdout.count("test normalised MSE") == 1  # rank 0 alone prints
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert two["test"] == pytest.approx(one["test"], rel=1e-5)
    for task in ("task1", "task2"):
        np.testing.assert_allclose(two["history"]["losses"][task], one["history"]["losses"][task], rtol=1e-5)
        np.testing.assert_allclose(two["history"]["task_weights"][task], one["history"]["task_weights"][task], rtol=1e-5)


def test_a_missing_output_folder_is_refused_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--steps", "100000", "--output", str(tmp_path / "missing" / "x.json")])
    assert exit_.value.code == 2
    assert "does not exist; create it first" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--steps", "0"], "argument --steps: '0' is not a whole number >= 1"),
    (["--batch-size", "-4"], "argument --batch-size: '-4' is not a whole number >= 1"),
    (["--lr", "nan"], "argument --lr: 'nan' is not a finite number in (0, inf)"),
    (["--lr", "0"], "argument --lr: '0' is not a finite number in (0, inf)"),
    (["--tasks", "1"], "argument --tasks: '1' is not a whole number >= 2"),
    (["--correlation", "1.5"], "argument --correlation: '1.5' is not a finite number in [-1, 1]"),
    (["--seed", "-1"], "argument --seed: '-1' is not a whole number >= 0"),
    (["--steps", "ten"], "argument --steps: 'ten' is not a whole number >= 1"),
])
def test_the_entry_point_refuses_bad_settings_by_name_before_training(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
