"""The shared multi-task PEFT bookkeeping, on a toy layer: a per-task bias added to a frozen linear."""

import pytest
import torch
from torch import nn

from mtl_tutorial.multitask_peft import (
    MultiTaskPEFTModel,
    TaskRoutedLayer,
    check_task_names,
    make_routing,
    no_target_error,
    set_active_task,
    task_routing,
)

TASKS = ("sentiment", "pos")


class PerTaskBias(TaskRoutedLayer):
    def __init__(self, base: nn.Linear, tasks):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.bias = nn.ParameterDict({t: nn.Parameter(torch.randn(base.out_features)) for t in tasks})

    @property
    def tasks(self):
        return tuple(self.bias)

    def forward(self, x):
        routing = self.current_routing(len(x))
        y = self.base(x)
        if isinstance(routing, str):
            return y + self.bias[routing]
        for task, positions in routing.items():
            y = y.index_add(0, positions, self.bias[task].expand(len(positions), -1))
        return y


class ToyModel(MultiTaskPEFTModel):
    def __init__(self, activation="relu"):
        torch.manual_seed(0)
        trunk = nn.Sequential(PerTaskBias(nn.Linear(4, 5), TASKS), {"relu": nn.ReLU(), "tanh": nn.Tanh()}[activation])
        super().__init__(trunk, {"sentiment": nn.Linear(5, 3), "pos": nn.Linear(5, 4)})
        self.activation = activation

    def task_peft_state_dict(self, task):
        return {"bias": self.trunk[0].bias[task]}

    def task_metadata(self):
        return {"activation": self.activation}


def test_make_routing():
    assert make_routing("pos", TASKS) == "pos"
    routing = make_routing(["pos", "sentiment", "pos"], TASKS)
    assert list(routing) == ["pos", "sentiment"]
    assert routing["pos"].tolist() == [0, 2] and routing["sentiment"].tolist() == [1]
    assert make_routing(None, TASKS) is None
    with pytest.raises(ValueError, match="unknown task 'sentimnet'; tasks are: sentiment, pos"):
        make_routing("sentimnet", TASKS)
    with pytest.raises(TypeError, match="not a tensor of task ids"):
        make_routing(torch.tensor([0, 1]), TASKS)


@pytest.mark.parametrize("tasks", ["sentiment", [], ["a", "a"], ["a.b"], [""]])
def test_check_task_names_rejects(tasks):
    with pytest.raises(ValueError):
        check_task_names(tasks)


def test_mixed_batch_equals_per_task_runs_and_gradients():
    model = ToyModel()
    x = torch.randn(5, 4)
    names = ["pos", "sentiment", "pos", "sentiment", "sentiment"]
    mixed = model(x, names)
    assert set(mixed) == {"pos", "sentiment"}
    for task, (outputs, positions) in mixed.items():
        torch.testing.assert_close(outputs, model(x[positions], task))
    (mixed["pos"].outputs.sum() + mixed["sentiment"].outputs.sum()).backward()
    assert model.trunk[0].bias["pos"].grad is not None and model.trunk[0].bias["sentiment"].grad is not None
    assert model.trunk[0].base.weight.grad is None


def test_routing_is_cleared_after_a_call_and_a_missing_task_is_clear():
    model = ToyModel()
    model(torch.randn(2, 4), "pos")
    with pytest.raises(RuntimeError, match="no task is active"):
        model.trunk(torch.randn(2, 4))
    set_active_task(model, "sentiment")
    torch.testing.assert_close(model.trunk(torch.ones(1, 4)), model.trunk(torch.ones(1, 4)))
    with task_routing(model, ["pos", "pos"]), pytest.raises(ValueError, match="covers 2 examples but the batch has 3"):
        model.trunk(torch.randn(3, 4))
    assert model.trunk[0].routing == "sentiment"
    with pytest.raises(ValueError, match="no multi-task PEFT layers"):
        set_active_task(nn.Linear(2, 2), "pos")


def test_save_and_load_one_task_is_exact(tmp_path):
    model, other = ToyModel(), ToyModel()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    x = torch.randn(3, 4)
    model.save_task("pos", tmp_path / "pos.safetensors")
    assert model.task_parameter_count("pos") == 5 + 5 * 4 + 4
    other.trunk[0].base.load_state_dict(model.trunk[0].base.state_dict())  # same backbone
    sentiment_before = other(x, "sentiment")
    assert not torch.allclose(other(x, "pos"), model(x, "pos"))
    other.load_task("pos", tmp_path / "pos.safetensors")
    torch.testing.assert_close(other(x, "pos"), model(x, "pos"), rtol=0, atol=0)
    torch.testing.assert_close(other(x, "sentiment"), sentiment_before, rtol=0, atol=0)  # other tasks untouched
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        model.save_task("nope", tmp_path / "x.safetensors")


def test_load_rejects_a_file_of_another_shape_or_format(tmp_path):
    from safetensors.torch import save_file

    model = ToyModel()
    save_file({"bias": torch.zeros(7)}, str(tmp_path / "alien.safetensors"))
    with pytest.raises(ValueError, match="not mtl_tutorial.task/1"):
        model.load_task("pos", tmp_path / "alien.safetensors")
    model.save_task("sentiment", tmp_path / "sentiment.safetensors")
    with pytest.raises(ValueError, match="head.weight has shape \\(3, 5\\) in .* but \\(4, 5\\) here"):
        model.load_task("pos", tmp_path / "sentiment.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "sentiment.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()
    renamed = {("bias2" if k == "bias" else k): t for k, t in model.task_state_dict("sentiment").items()}
    save_file({k: t.detach().clone() for k, t in renamed.items()}, str(tmp_path / "renamed.safetensors"), metadata)
    with pytest.raises(ValueError, match=r"does not fit task 'sentiment' of this model: missing \['bias'\], unexpected \['bias2'\]"):
        model.load_task("sentiment", tmp_path / "renamed.safetensors")


def test_load_names_the_path_of_a_missing_damaged_or_foreign_file(tmp_path):
    model = ToyModel()
    with pytest.raises(FileNotFoundError, match=r"no saved task at .*missing.safetensors: the file does not exist"):
        model.load_task("pos", tmp_path / "missing.safetensors")
    model.save_task("pos", tmp_path / "pos.safetensors")
    data = (tmp_path / "pos.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) - 16])  # a copy that stopped early
    torch.save(model.task_state_dict("pos"), tmp_path / "pos.pt")  # torch's format, not safetensors
    (tmp_path / "empty.safetensors").write_bytes(b"")
    for name in ("truncated.safetensors", "pos.pt", "empty.safetensors"):
        with pytest.raises(ValueError, match=rf".*{name} is not a task saved by save_task, or it is damaged \(safetensors: "):
            model.load_task("pos", tmp_path / name)


def test_load_refuses_a_file_saved_with_other_hyper_parameters(tmp_path):
    """Same tensor names and shapes, another activation: loading would run the wrong model silently."""
    ToyModel(activation="tanh").save_task("pos", tmp_path / "pos.safetensors")
    model = ToyModel(activation="relu")
    before = model.trunk[0].bias["pos"].detach().clone()
    with pytest.raises(ValueError, match=r"pos.safetensors was saved by a model with other settings: "
                                         r"activation='tanh' in the file but 'relu' here"):
        model.load_task("pos", tmp_path / "pos.safetensors")
    assert torch.equal(model.trunk[0].bias["pos"], before)  # nothing was half-loaded
    ToyModel(activation="tanh").load_task("pos", tmp_path / "pos.safetensors")


def test_no_target_error_says_what_it_looked_for_and_what_there_is():
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), nn.Linear(2, 1))
    assert str(no_target_error(model, "nn.Linear matching 'query'")) == (
        "found no nn.Linear matching 'query' in this Sequential; its nn.Linear layers (2) end with: 0, 1 (e.g. 0.0, 1)"
    )
    assert str(no_target_error(nn.ReLU(), "self-attention")).endswith("in this ReLU; it has no nn.Linear layer at all")
    assert "it is a single nn.Linear" in str(no_target_error(nn.Linear(2, 2), "self-attention"))
