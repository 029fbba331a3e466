"""Bookkeeping shared by the multi-task PEFT methods (adapters, LoRA, prefixes).

All three keep one frozen backbone and give each named task its own small modules inside it plus
its own head. Two things are the same for every method and live here, once:

- **routing**: which task each example of the next batch belongs to. Every layer that holds
  per-task modules subclasses ``TaskRoutedLayer``; ``task_routing(model, task)`` sets the routing of
  all of them for one forward pass: one task name for a single-task batch, or one name per example
  for a mixed-task batch (which peft allows at inference only; here it works in training too).
- **one task's state**: ``MultiTaskPEFTModel`` saves and loads what one task owns (its PEFT tensors
  and its head) to a safetensors file, without the backbone, and refuses a file saved with other
  hyper-parameters (``task_metadata``) or on another backbone (its fingerprint) instead of loading
  it into the wrong model.

The task file is a safetensors file: the task's tensors and, as metadata (strings), ``format`` (the
model class's ``save_format``), ``task`` (the task's name), ``tensors_sha256`` (``tensors_sha256`` of
the tensors), ``backbone`` (``backbone.backbone_fingerprint``, when there is one) and the method's
hyper-parameters (``task_metadata``). ``save_task`` writes it to a temporary file in the same folder
and renames that onto the target, so a crash leaves the old file or the new one, never half of one;
``load_task`` recomputes the checksum and refuses a damaged file, or another task's.

``no_target_error`` is the one error every injection (``apply_adapters``, ``apply_lora``,
``apply_prefix``, ``PromptTunedEncoder``) raises when it finds nowhere to go.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import reprlib
import secrets
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from mtl_tutorial.backbone import backbone_fingerprint
from mtl_tutorial.models import HardSharingModel

TaskRouting = str | dict[str, torch.Tensor] | None
"""One task for the whole batch, task -> positions (B_t,) of its examples in the batch, or None."""


def check_task_names(tasks: Sequence[str]) -> None:
    """Task names are unique, non-empty strings without '.' (they become parameter names)."""
    if isinstance(tasks, str) or not tasks:
        raise ValueError(f"tasks must be a non-empty list of task names, got {tasks!r}")
    for task in tasks:
        if not isinstance(task, str) or not task or "." in task:
            raise ValueError(f"task names must be non-empty strings without '.', got {task!r}")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"task names must be unique, got {list(tasks)}")


def no_target_error(model: nn.Module, looked_for: str) -> ValueError:
    """The error of a PEFT injection that matched no module of ``model``: what it looked for, and
    what there is (the endings of the ``nn.Linear`` names and a few full names), so the learner can
    fix the pattern instead of training a model with nothing trainable in it."""
    linears = [name for name, module in model.named_modules() if name and isinstance(module, nn.Linear)]
    if linears:
        endings = sorted({name.rsplit(".", 1)[-1] for name in linears})
        there = f"its nn.Linear layers ({len(linears)}) end with: {', '.join(endings)} (e.g. {', '.join(linears[:3])})"
    elif isinstance(model, nn.Linear):
        there = "it is a single nn.Linear: pass the model that contains the layers"
    else:
        there = "it has no nn.Linear layer at all"
    return ValueError(f"found no {looked_for} in this {type(model).__name__}; {there}")


def make_routing(task: str | Sequence[str] | None, tasks: Sequence[str]) -> TaskRouting:
    """A task name, one name per example, or None -> the routing the layers apply."""
    if task is None:
        return None
    if isinstance(task, torch.Tensor):
        raise TypeError(
            f"pass task names, not a tensor of task ids; map them first: [tasks[i] for i in ids.tolist()] "
            f"with tasks {list(tasks)}"
        )
    names = [task] if isinstance(task, str) else list(task)
    for name in dict.fromkeys(names):
        if name not in tasks:
            raise ValueError(f"unknown task {name!r}; tasks are: {', '.join(tasks)}")
    if isinstance(task, str):
        return task
    return {name: torch.tensor([i for i, t in enumerate(names) if t == name]) for name in dict.fromkeys(names)}


class TaskRoutedLayer(nn.Module):
    """Base of every layer that holds per-task modules; ``routing`` says whose examples come next."""

    routing: TaskRouting = None

    @property
    def tasks(self) -> tuple[str, ...]:
        raise NotImplementedError

    def current_routing(self, batch_size: int) -> str | dict[str, torch.Tensor]:
        """The routing of this forward pass, checked against the batch size."""
        routing = self.routing
        if routing is None:
            raise RuntimeError(
                f"no task is active in this multi-task layer; call the multi-task model with a task, or "
                f"set_active_task(model, task) with one of: {', '.join(self.tasks)}"
            )
        if isinstance(routing, dict) and sum(len(p) for p in routing.values()) != batch_size:
            raise ValueError(
                f"the task routing covers {sum(len(p) for p in routing.values())} examples but the batch "
                f"has {batch_size}; pass one task name per example"
            )
        return routing


def routed_layers(model: nn.Module) -> list[TaskRoutedLayer]:
    """Every ``TaskRoutedLayer`` in ``model``; an error when there is none."""
    layers = [m for m in model.modules() if isinstance(m, TaskRoutedLayer)]
    if not layers:
        raise ValueError("this model has no multi-task PEFT layers; add per-task adapters, LoRA or prefixes first")
    return layers


def set_active_task(model: nn.Module, task: str | None) -> None:
    """Route every later batch through ``task``'s modules (None: no task, calls then fail clearly)."""
    layers = routed_layers(model)
    routing = make_routing(task, layers[0].tasks)
    for layer in layers:
        layer.routing = routing


@contextlib.contextmanager
def task_routing(model: nn.Module, task: str | Sequence[str]) -> Iterator[None]:
    """Inside the block, example i of the batch goes through ``task`` (one name) or ``task[i]``;
    the previous routing comes back on exit."""
    layers = routed_layers(model)
    routing = make_routing(task, layers[0].tasks)
    previous = [layer.routing for layer in layers]
    for layer in layers:
        layer.routing = routing
    try:
        yield
    finally:
        for layer, before in zip(layers, previous):
            layer.routing = before


FILE_KEYS = frozenset({"format", "task", "tensors_sha256", "backbone"})
"""Metadata keys of a task file that say what it is and where its tensors come from; every other key
is a hyper-parameter of the model that saved it (``task_metadata``)."""


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of named tensors: for each name in sorted order, a JSON line [name, dtype, shape]
    then the tensor's bytes (row-major, as safetensors stores them). Any changed byte, name, dtype or
    shape changes it; where the tensors live (device, strides) does not."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update((json.dumps([name, str(tensor.dtype), list(tensor.shape)]) + "\n").encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _task_file(path: Any) -> Path:
    """``path`` as a ``Path`` to an existing file, or an error that names it and says what to pass."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be the path of a task file (str or pathlib.Path), got {type(path).__name__} "
                        f"{reprlib.repr(path)}")
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.safetensors"))
        raise IsADirectoryError(
            f"{path} is a folder, not a task file; pass the path of the file save_task wrote"
            + (f" (this folder holds: {', '.join(found[:5])})" if found else "")
        )
    if not path.is_file():
        raise FileNotFoundError(f"no saved task at {path}: the file does not exist; save_task(task, path) writes one")
    return path


def read_task_file(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, list[int]]]:
    """(metadata, tensor name -> shape) of a file written by ``save_task``, without loading the tensors."""
    return _read_task_file(path, lambda handle, key: handle.get_slice(key).get_shape())


def _read_task_file(path: Any, read: Callable[[Any, str], Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """(metadata, tensor name -> ``read(handle, name)``) of a safetensors file; refuses, naming it, a
    missing file, a folder, or one that is not a safetensors file or is cut short."""
    from safetensors import SafetensorError, safe_open

    path = _task_file(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}, {key: read(handle, key) for key in handle.keys()}
    except SafetensorError as error:
        raise ValueError(
            f"{path} is not a task saved by save_task, or it is damaged (safetensors: {error}); "
            f"save the task again with save_task(task, path)"
        ) from error


def _check_checksum(path: Path, metadata: Mapping[str, str], tensors: Mapping[str, torch.Tensor]) -> None:
    """Refuse a file whose tensors differ from the ones ``save_task`` wrote; warn on a file saved
    before the checksum existed (it cannot be verified)."""
    if "tensors_sha256" not in metadata:
        warnings.warn(
            f"{path} has no checksum of its tensors (it was saved before save_task recorded one), so damage to "
            f"it cannot be detected; it is loaded unverified. Save the task again with save_task to add one",
            UserWarning,
            stacklevel=3,
        )
    elif tensors_sha256(tensors) != metadata["tensors_sha256"]:
        raise ValueError(
            f"{path} is damaged: its tensors do not match the checksum save_task wrote beside them (a changed "
            f"byte, e.g. from a broken copy or download); save the task again from the trained model with "
            f"save_task(task, path)"
        )


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, flushed to disk and then
    renamed onto ``path`` (``os.replace`` is atomic): ``path`` is the old file or the new one, never a
    part. The temporary file is removed on any exception, Ctrl-C included. The file's permissions are
    those of a new file (0o666 less the umask), as ``open(path, "wb")`` gives."""
    temporary = path.with_name(f"{path.name}.{secrets.token_hex(4)}.partial")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    if os.name == "posix":  # make the rename durable too, where the file system lets a folder be flushed
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            with contextlib.suppress(OSError):
                os.fsync(folder)
        finally:
            os.close(folder)


def _metadata_mismatches(saved: dict[str, str], own: dict[str, str]) -> list[str]:
    """``"key='saved' in the file but 'own' here"`` for every hyper-parameter that differs."""
    def shown(metadata: dict[str, str], key: str) -> str:
        return repr(metadata[key]) if key in metadata else "nothing"

    keys = sorted((saved.keys() | own.keys()) - FILE_KEYS)  # the backbone is checked on its own
    return [f"{key}={shown(saved, key)} in the file but {shown(own, key)} here" for key in keys if saved.get(key) != own.get(key)]


class MultiTaskPEFTModel(HardSharingModel):
    """A frozen trunk with per-task PEFT layers inside it, and one head per task.

    ``forward(x, "sentiment")`` and ``forward(x, ["sentiment", "pos", ...])`` behave as in
    ``HardSharingModel`` (a mixed batch returns ``{task: TaskOutput}``), with every example routed
    through its own task's layers, in training too. Subclasses add the layers and say, in
    ``task_state_dict``, which tensors one task owns.
    """

    save_format = "mtl_tutorial.task/1"

    def forward(self, x: Any, task: str | Sequence[str]) -> Any:
        with task_routing(self, task):
            return super().forward(x, task)

    def set_active_task(self, task: str | None) -> None:
        """Route the trunk through ``task`` when it is called on its own (e.g. to encode texts)."""
        set_active_task(self, task)

    def task_peft_state_dict(self, task: str) -> dict[str, torch.Tensor]:
        """The PEFT tensors of task ``task`` inside the trunk (subclasses define it)."""
        raise NotImplementedError

    def task_metadata(self) -> dict[str, str]:
        """Hyper-parameters stored beside a saved task (e.g. the LoRA rank), as strings."""
        return {}

    @classmethod
    def arguments_from_metadata(cls, metadata: dict[str, str]) -> dict:
        """The inverse of ``task_metadata``: the keyword arguments that rebuild such a model."""
        return {}

    def task_state_dict(self, task: str) -> dict[str, torch.Tensor]:
        """What task ``task`` owns: its PEFT tensors and ``head.<name>`` for its head; no backbone."""
        self._check_task(task)
        state = dict(self.task_peft_state_dict(task))
        state |= {f"head.{name}": t for name, t in self.heads[task].state_dict(keep_vars=True).items()}
        return state

    def task_parameter_count(self, task: str) -> int:
        """Trainable parameters of one task: its PEFT tensors and its head."""
        return sum(tensor.numel() for tensor in self.task_state_dict(task).values())

    def saved_metadata(self) -> dict[str, str]:
        """What ``save_task`` writes beside the tensors and ``load_task`` checks: the hyper-parameters
        (``task_metadata``) and the backbone's fingerprint (``backbone.backbone_fingerprint``)."""
        fingerprint = backbone_fingerprint(self.trunk)
        return {**self.task_metadata(), **({"backbone": fingerprint} if fingerprint else {})}

    def _check_task_and_path(self, verb: str, task: Any, path: Any) -> None:
        """``save_task``'s and ``load_task``'s arguments, checked before any file is touched."""
        if isinstance(path, str) and path in self.heads and not (isinstance(task, str) and task in self.heads):
            raise TypeError(f"{verb} takes (task, path) in that order; got task={reprlib.repr(task)}, path={path!r}: "
                            f"call {verb}({path!r}, {reprlib.repr(str(task))})")
        if not isinstance(task, str):
            raise TypeError(f"task must be a task name, one of: {', '.join(self.tasks)}; got {type(task).__name__} "
                            f"{reprlib.repr(task)}")
        self._check_task(task)
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a file path (str or pathlib.Path), e.g. '{task}.safetensors'; got "
                            f"{type(path).__name__} {reprlib.repr(path)}")

    def save_task(self, task: str, path: str | os.PathLike) -> None:
        """Write one task's PEFT tensors and head to a safetensors file (no backbone), with the metadata
        ``load_task`` checks (``format``, ``task``, ``tensors_sha256``, ``backbone`` and the
        hyper-parameters); atomically: an existing file at ``path`` is replaced only once the new one
        is complete on disk."""
        from safetensors.torch import save

        self._check_task_and_path("save_task", task, path)
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder; give save_task a file path, e.g. "
                                    f"{path / f'{task}.safetensors'}")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"cannot save to {path}: the folder {path.parent} does not exist; create it first "
                                    f"(Path({str(path.parent)!r}).mkdir(parents=True))")
        tensors = {k: t.detach().cpu().clone().contiguous() for k, t in self.task_state_dict(task).items()}
        metadata = {**self.saved_metadata(), "format": self.save_format, "task": task,
                    "tensors_sha256": tensors_sha256(tensors)}
        _write_atomically(path, save(tensors, metadata=metadata))

    def load_task(self, task: str, path: str | os.PathLike) -> None:
        """Overwrite task ``task``'s PEFT tensors and head with those ``save_task`` wrote.

        Refuses, naming the file: a missing file or a folder, one that is not a saved task, one whose
        tensors do not match their checksum (damaged), one saved by another kind of model, on another
        backbone or with other hyper-parameters, tensors of other names or shapes, or another task's
        file. A file saved before the checksum existed is loaded with a warning.
        """
        self._check_task_and_path("load_task", task, path)
        stored, saved = _read_task_file(path, lambda handle, key: handle.get_tensor(key))
        path = Path(path)
        if stored.get("format") != self.save_format:
            raise ValueError(
                f"{path} holds {stored.get('format') or 'an unknown format'}, not {self.save_format}; load it into "
                f"the same kind of model that saved it"
            )
        _check_checksum(path, stored, saved)
        own_metadata = self.saved_metadata()
        if "backbone" in stored and "backbone" in own_metadata and stored["backbone"] != own_metadata["backbone"]:
            raise ValueError(
                f"{path} was trained on another backbone (fingerprint {stored['backbone']}, this model's is "
                f"{own_metadata['backbone']}); load it into the backbone it was trained on"
            )
        mismatches = _metadata_mismatches(stored, own_metadata)
        if mismatches:
            raise ValueError(
                f"{path} was saved by a model with other settings: {'; '.join(mismatches)}; build the model "
                f"with the saved settings before loading"
            )
        saved_task = stored.get("task")
        holds = "no task name" if saved_task is None else f"task {saved_task!r}"
        other_task = f"it holds {holds}, not {task!r}: load each task from its own file" if saved_task != task else ""
        own = self.task_state_dict(task)
        missing, unexpected = sorted(own.keys() - saved.keys()), sorted(saved.keys() - own.keys())
        if missing or unexpected:
            raise ValueError(
                f"{path} does not fit task {task!r} of this model: missing {missing[:3]}, unexpected "
                f"{unexpected[:3]}; {other_task or 'save and load with the same layers, sizes and head'}"
            )
        for key, tensor in own.items():
            if saved[key].shape != tensor.shape:
                raise ValueError(
                    f"{key} has shape {tuple(saved[key].shape)} in {path} but {tuple(tensor.shape)} here; "
                    f"{other_task or 'use the same sizes as the saved model'}"
                )
        if saved_task != task:
            raise ValueError(
                f"{path} holds {holds} but was loaded as task {task!r}; load each task from the file save_task "
                f"wrote for it" + (f": load_task({saved_task!r}, path)" if saved_task in self.heads else "")
            )
        with torch.no_grad():
            for key, tensor in own.items():
                tensor.copy_(saved[key])
