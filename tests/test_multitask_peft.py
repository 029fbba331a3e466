"""The shared multi-task PEFT bookkeeping, on a toy layer: a per-task bias added to a frozen linear."""

import errno
import hashlib
import io
import json
import os

import pytest
import torch
from torch import nn

from mtl_tutorial import multitask_peft
from mtl_tutorial.multitask_peft import (
    MultiTaskPEFTModel,
    TaskRoutedLayer,
    check_task_names,
    make_routing,
    no_target_error,
    read_task_file,
    set_active_task,
    task_routing,
    tensors_sha256,
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
    def __init__(self, activation="relu", num_classes=(3, 4)):
        torch.manual_seed(0)
        trunk = nn.Sequential(PerTaskBias(nn.Linear(4, 5), TASKS), {"relu": nn.ReLU(), "tanh": nn.Tanh()}[activation])
        super().__init__(trunk, {task: nn.Linear(5, n) for task, n in zip(TASKS, num_classes)})
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
    renamed = {("bias2" if k == "bias" else k): t.detach().clone() for k, t in model.task_state_dict("sentiment").items()}
    save_file(renamed, str(tmp_path / "renamed.safetensors"), metadata | {"tensors_sha256": tensors_sha256(renamed)})
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


# --- the task file: its metadata, checksum, atomic write, and the arguments of save/load ------------


def flip_one_data_byte(path, where):
    """Flip the lowest bit of one byte of the tensor data (after the 8-byte length and the JSON header):
    ``where`` = 0 the first data byte, 1 the last."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start + round(where * (len(data) - 1 - start))] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_saved_file_records_its_task_and_a_checksum_of_its_tensors(tmp_path):
    model = ToyModel()
    model.save_task("pos", tmp_path / "pos.safetensors")
    metadata, shapes = read_task_file(tmp_path / "pos.safetensors")
    assert metadata == {"format": "mtl_tutorial.task/1", "task": "pos", "activation": "relu",
                        "tensors_sha256": tensors_sha256(model.task_state_dict("pos"))}
    assert shapes == {"bias": [5], "head.weight": [4, 5], "head.bias": [4]}


def test_tensors_sha256_hashes_names_dtypes_shapes_and_bytes_in_name_order():
    a, b = torch.arange(6.0).reshape(2, 3), torch.tensor([1, 2], dtype=torch.int64)
    expected = hashlib.sha256()
    for name, tensor in [("a", a), ("b", b)]:
        expected.update((json.dumps([name, str(tensor.dtype), list(tensor.shape)]) + "\n").encode())
        expected.update(tensor.numpy().tobytes())
    assert tensors_sha256({"b": b, "a": a}) == expected.hexdigest()  # insertion order does not matter
    assert tensors_sha256({"a": a.t().contiguous().t(), "b": b}) == expected.hexdigest()  # nor strides
    for other in ({"a": a.double(), "b": b}, {"a": a.reshape(3, 2), "b": b}, {"A": a, "b": b}, {"a": a, "b": b + 1}):
        assert tensors_sha256(other) != expected.hexdigest()


@pytest.mark.parametrize("where", [0, 0.5, 1])
def test_a_file_with_one_flipped_byte_of_tensor_data_is_refused(tmp_path, where):
    model, other = ToyModel(), ToyModel()
    with torch.no_grad():
        other.trunk[0].bias["pos"].add_(1.0)
    path = tmp_path / "pos.safetensors"
    model.save_task("pos", path)
    flip_one_data_byte(path, where)
    before = {k: t.detach().clone() for k, t in other.task_state_dict("pos").items()}
    with pytest.raises(ValueError, match=r"pos.safetensors is damaged: its tensors do not match the checksum .*"
                                         r"save the task again from the trained model with save_task"):
        other.load_task("pos", path)
    assert all(torch.equal(t, before[k]) for k, t in other.task_state_dict("pos").items())  # nothing was loaded


def test_a_file_saved_before_the_checksum_loads_with_a_warning(tmp_path):
    from safetensors.torch import save_file

    model, other = ToyModel(), ToyModel()
    with torch.no_grad():
        other.trunk[0].bias["pos"].add_(1.0)
    model.save_task("pos", tmp_path / "new.safetensors")
    metadata, _ = read_task_file(tmp_path / "new.safetensors")
    old = {key: value for key, value in metadata.items() if key != "tensors_sha256"}
    save_file({k: t.detach().clone() for k, t in model.task_state_dict("pos").items()}, str(tmp_path / "old.safetensors"), old)
    with pytest.warns(UserWarning, match=r"old.safetensors has no checksum of its tensors .* damage to it cannot be "
                                         r"detected; it is loaded unverified\. Save the task again"):
        other.load_task("pos", tmp_path / "old.safetensors")
    assert torch.equal(other.trunk[0].bias["pos"], model.trunk[0].bias["pos"])


def test_another_tasks_file_is_refused_even_when_its_shapes_fit(tmp_path):
    model = ToyModel(num_classes=(4, 4))
    model.save_task("sentiment", tmp_path / "sentiment.safetensors")
    with pytest.raises(ValueError, match=r"sentiment.safetensors holds task 'sentiment' but was loaded as task 'pos'; "
                                         r"load each task from the file save_task wrote for it: load_task\('sentiment', path\)"):
        model.load_task("pos", tmp_path / "sentiment.safetensors")
    ToyModel().save_task("sentiment", tmp_path / "three_classes.safetensors")
    with pytest.raises(ValueError, match=r"but \(4, 5\) here; it holds task 'sentiment', not 'pos': load each task "
                                         r"from its own file$"):
        ToyModel().load_task("pos", tmp_path / "three_classes.safetensors")


class FullDisk(io.FileIO):
    """A file whose write stops half-way with 'no space left on device'."""

    def write(self, data):
        super().write(bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")


def raising(error):
    def fail(*args):
        raise error
    return fail


@pytest.mark.parametrize("target, replacement", [
    ("fdopen", FullDisk),  # half the bytes written, then an error
    ("fsync", raising(KeyboardInterrupt())),  # every byte written, then Ctrl-C before the rename
    ("replace", raising(PermissionError("the target is locked"))),
])
def test_a_save_that_fails_midway_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch, target, replacement):
    model = ToyModel()
    path = tmp_path / "pos.safetensors"
    model.save_task("pos", path)
    old_bytes = path.read_bytes()
    with torch.no_grad():
        model.trunk[0].bias["pos"].add_(1.0)
    monkeypatch.setattr(multitask_peft.os, target, replacement)
    with pytest.raises((OSError, KeyboardInterrupt)):
        model.save_task("pos", path)
    with pytest.raises((OSError, KeyboardInterrupt)):
        model.save_task("pos", tmp_path / "new.safetensors")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pos.safetensors"]  # no partial target, no temporary file
    assert path.read_bytes() == old_bytes
    ToyModel().load_task("pos", path)


@pytest.mark.skipif(os.name != "posix", reason="file modes and the umask are POSIX")
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_a_saved_file_has_the_permissions_of_a_new_file(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        ToyModel().save_task("pos", tmp_path / "pos.safetensors")
        ToyModel().save_task("pos", tmp_path / "pos.safetensors")  # over an existing file too
    finally:
        os.umask(old)
    assert (tmp_path / "pos.safetensors").stat().st_mode & 0o777 == mode


def test_save_and_load_check_their_arguments_first(tmp_path):
    model = ToyModel()
    path = tmp_path / "pos.safetensors"
    model.save_task("pos", path)
    for method in (model.save_task, model.load_task):
        verb = method.__name__
        with pytest.raises(TypeError, match=rf"{verb} takes \(task, path\) in that order; .*call {verb}\('pos', "):
            method(str(path), "pos")
        with pytest.raises(TypeError, match=rf"{verb} takes \(task, path\) in that order"):
            method(path, "pos")
        with pytest.raises(TypeError, match=r"task must be a task name, one of: sentiment, pos; got int 0"):
            method(0, path)
        with pytest.raises(ValueError, match="unknown task 'sentimnet'; tasks are: sentiment, pos"):
            method("sentimnet", path)
        with pytest.raises(TypeError, match=r"path must be a file path \(str or pathlib.Path\), e.g. 'pos.safetensors'; got int 3"):
            method("pos", 3)
    with pytest.raises(IsADirectoryError, match=r"is a folder; give save_task a file path, e.g. .*pos.safetensors"):
        model.save_task("pos", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"cannot save to .*pos.safetensors: the folder .*nowhere does not exist; "
                                                r"create it first"):
        model.save_task("pos", tmp_path / "nowhere" / "pos.safetensors")
    with pytest.raises(IsADirectoryError, match=r"is a folder, not a task file; .*this folder holds: pos.safetensors\)"):
        model.load_task("pos", tmp_path)
    with pytest.raises(TypeError, match=r"path must be the path of a task file \(str or pathlib.Path\), got NoneType"):
        read_task_file(None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pos.safetensors"]
