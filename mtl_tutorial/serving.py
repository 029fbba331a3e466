"""Serving many tasks on one frozen backbone: per-task files in, (task, text) requests out.

A deployment keeps the backbone once in memory and, per task, only what ``save_task`` wrote (its
PEFT tensors and head: kilobytes to a few MB). A batch of requests may mix tasks: each example is
routed through its own task's modules (``multitask_peft.task_routing``), so the batch costs one
backbone pass however many tasks it holds.

    predictor = MultiTaskPredictor.from_files({"supersense": "supersense.safetensors", ...}, backbone, tokenizer)
    predictor.predict([("supersense", "a small carnivorous mammal"), ("pos", "to move quickly")])

``from_files`` reads the method and its hyper-parameters from the files' metadata and refuses files
saved by different methods or settings, a file given for a task it does not hold (two files swapped),
and, through ``MultiTaskPEFTModel.load_task``, damaged files and files trained on another backbone.
Texts longer than the trunk's ``max_length`` tokens are truncated with a warning, or refused. Every
argument is checked where it enters, with an error that says what to pass instead.
"""

from __future__ import annotations

import copy
import numbers
import os
import reprlib
import warnings
from typing import Any, Mapping, NamedTuple, Sequence

import torch
from torch import nn

from mtl_tutorial.adapter import MultiTaskAdapterModel
from mtl_tutorial.lora import MultiTaskLoRAModel
from mtl_tutorial.models import TextEncoderTrunk
from mtl_tutorial.multitask_peft import FILE_KEYS, MultiTaskPEFTModel, TaskRoutedLayer, check_task_names, read_task_file
from mtl_tutorial.prefix import MultiTaskPrefixModel

MODEL_CLASSES: dict[str, type[MultiTaskPEFTModel]] = {
    cls.save_format: cls for cls in (MultiTaskAdapterModel, MultiTaskLoRAModel, MultiTaskPrefixModel)
}
"""The ``format`` a saved task file names -> the multi-task model class that reads it."""

TRUNCATION = ("warn", "error")


class Prediction(NamedTuple):
    """The answer to one request: its task, the arg-max class, the logits (C_t,), and whether the
    text was cut to ``max_length`` tokens."""

    task: str
    label: int
    logits: torch.Tensor
    truncated: bool


def _check_count(name: str, value: Any) -> None:
    """Raise unless ``value`` is an int >= 1 (a bool is not a count)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= 1, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def _check_truncation(truncation: Any) -> None:
    if not isinstance(truncation, str) or truncation not in TRUNCATION:
        raise ValueError(f"truncation must be 'warn' (cut and warn) or 'error' (refuse), got {truncation!r}")


def _check_from_files_arguments(files: Any, backbone: Any, tokenizer: Any, max_length: Any) -> None:
    """``from_files``'s arguments, checked before any file is read or the backbone copied."""
    if not isinstance(files, Mapping):
        raise TypeError(f"files must map each task to its file, e.g. {{'pos': 'pos.safetensors'}}; got "
                        f"{type(files).__name__} {reprlib.repr(files)}")
    if not files:
        raise ValueError("files is empty; pass {task: path of the file save_task wrote}")
    check_task_names(list(files))
    for task, path in files.items():
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"files[{task!r}] must be a file path (str or pathlib.Path), got {type(path).__name__} "
                            f"{reprlib.repr(path)}")
    if isinstance(backbone, tuple):
        raise TypeError("backbone is a tuple, e.g. load_backbone()'s (encoder, tokenizer); unpack it: "
                        "from_files(files, *load_backbone())")
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"backbone must be the pretrained encoder (an nn.Module), e.g. load_backbone()[0]; got "
                        f"{type(backbone).__name__}")
    if any(isinstance(module, TaskRoutedLayer) for module in backbone.modules()):
        raise ValueError("backbone already holds multi-task PEFT layers; pass the pretrained encoder "
                         "(load_backbone()[0]), not a trained model's: from_files adds the layers the files need")
    if not callable(tokenizer):
        raise TypeError(f"tokenizer must be the backbone's tokenizer (texts -> token ids), e.g. load_backbone()[1]; "
                        f"got {type(tokenizer).__name__} {reprlib.repr(tokenizer)}")
    _check_count("max_length", max_length)
    positions = getattr(getattr(backbone, "config", None), "max_position_embeddings", None)
    if isinstance(positions, int) and max_length > positions:
        raise ValueError(f"max_length = {max_length} tokens is more than the backbone's {positions} positions; "
                         f"use max_length <= {positions}")


def _model_class(metadata: Mapping[str, str], path: str | os.PathLike) -> type[MultiTaskPEFTModel]:
    """The multi-task model class a file's metadata names."""
    format_ = metadata.get("format")
    if format_ not in MODEL_CLASSES:
        raise ValueError(
            f"{path} holds {format_ or 'no format'}, not a multi-task PEFT task; MultiTaskPredictor reads "
            f"{', '.join(MODEL_CLASSES)}"
        )
    return MODEL_CLASSES[format_]


def _linear_head(shapes: Mapping[str, torch.Size], path: str | os.PathLike) -> nn.Linear:
    """An empty ``nn.Linear`` head of the shape a task file stores (``head.weight`` (C, H), ``head.bias``)."""
    head_keys = {key for key in shapes if key.startswith("head.")}
    if head_keys != {"head.weight", "head.bias"}:
        raise ValueError(
            f"{path} holds a head with tensors {sorted(head_keys)}; from_files rebuilds linear heads only: "
            f"build the model yourself, load_task each file, and pass it to MultiTaskPredictor(model)"
        )
    num_classes, hidden = shapes["head.weight"]
    return nn.Linear(hidden, num_classes)


class MultiTaskPredictor:
    """Answers batches of (task, text) requests with one multi-task PEFT model, one forward pass per
    batch of up to ``batch_size`` requests whatever their tasks.

    model: a ``MultiTaskPEFTModel`` whose trunk is a ``TextEncoderTrunk`` (its ``max_length`` is the
    length limit); truncation: ``"warn"`` cuts longer texts and warns, ``"error"`` refuses them.
    """

    def __init__(self, model: MultiTaskPEFTModel, truncation: str = "warn") -> None:
        if not isinstance(model, MultiTaskPEFTModel) or not isinstance(model.trunk, TextEncoderTrunk):
            raise TypeError(
                f"MultiTaskPredictor serves a MultiTaskPEFTModel on a TextEncoderTrunk, got {type(model).__name__}"
                + (f" on a {type(model.trunk).__name__}" if hasattr(model, "trunk") else "")
            )
        _check_truncation(truncation)
        self.model, self.truncation = model.eval(), truncation
        self.tokenizer, self.max_length = model.trunk.tokenizer, model.trunk.max_length

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.model.tasks

    @classmethod
    def from_files(
        cls,
        files: Mapping[str, str | os.PathLike],
        backbone: nn.Module,
        tokenizer: Any,
        max_length: int = 128,
        truncation: str = "warn",
    ) -> MultiTaskPredictor:
        """Build the model the files were saved from on ``backbone`` (left unchanged: a copy is
        wrapped), load each task's file, and serve them. files: task -> path written by ``save_task``
        for that task. All files must come from one method with the same settings (read from their
        metadata); each must hold the task it is given for and match its checksum."""
        _check_from_files_arguments(files, backbone, tokenizer, max_length)
        _check_truncation(truncation)
        first_task, first_path = next(iter(files.items()))
        first_metadata, _ = read_task_file(first_path)
        heads = {}
        for task, path in files.items():
            metadata, shapes = read_task_file(path)
            if metadata.get("task") != task:
                holds = f"task {metadata['task']!r}" if "task" in metadata else "no task name"
                raise ValueError(
                    f"file {path} holds {holds} but was given for {task!r}; give each task the file save_task "
                    f"wrote for it" + (" (are two files swapped?)" if metadata.get("task") in files else "")
                )
            others = sorted((metadata.keys() | first_metadata.keys()) - FILE_KEYS)
            for key in ["format", "backbone", *others]:
                if metadata.get(key) != first_metadata.get(key):
                    raise ValueError(
                        f"{path} (task {task!r}) was saved with {key}={metadata.get(key)!r} but {first_path} (task "
                        f"{first_task!r}) with {key}={first_metadata.get(key)!r}; one predictor serves tasks of one "
                        f"method with the same settings on the same backbone"
                    )
            heads[task] = _linear_head(shapes, path)
        model_class = _model_class(first_metadata, first_path)
        trunk = TextEncoderTrunk(copy.deepcopy(backbone), tokenizer, max_length)
        model = model_class(trunk, heads, **model_class.arguments_from_metadata(first_metadata))
        for task, path in files.items():
            model.load_task(task, path)
        return cls(model, truncation)

    def _check_requests(self, requests: Sequence[tuple[str, str]]) -> list[bool]:
        """Each request is (known task, text); returns, per request, whether its text is too long."""
        if isinstance(requests, tuple) and len(requests) == 2 and all(isinstance(r, str) for r in requests):
            raise TypeError("predict takes a list of (task, text) requests; wrap a single one: [(task, text)]")
        if isinstance(requests, Mapping):
            raise TypeError("requests is a dict; pass a list of (task, text) pairs, e.g. list(requests.items())")
        if isinstance(requests, str) or not isinstance(requests, Sequence):
            raise TypeError(f"requests must be a list of (task, text) pairs, got {type(requests).__name__} "
                            f"{reprlib.repr(requests)}"
                            + ("" if isinstance(requests, str) else "; e.g. list(requests)"))
        for i, request in enumerate(requests):
            if not isinstance(request, (tuple, list)) or len(request) != 2:
                raise TypeError(
                    f"request {i} is {reprlib.repr(request)}; each request is a (task, text) pair of strings"
                    + ("; for one task and many texts: [(task, text) for text in texts]"
                       if isinstance(request, str) else "")
                )
            task, text = request
            if isinstance(text, str) and text in self.tasks and not (isinstance(task, str) and task in self.tasks):
                raise TypeError(f"request {i} is {reprlib.repr(request)}, a (text, task) pair; each request is "
                                f"(task, text): ({text!r}, {reprlib.repr(task)})")
            if not isinstance(task, str):
                raise TypeError(f"request {i} has task {reprlib.repr(task)} ({type(task).__name__}); a task is its "
                                f"name, one of: {', '.join(self.tasks)}")
            if not isinstance(text, str):
                raise TypeError(
                    f"request {i} has a {type(text).__name__} as its text; a text is one string"
                    + ("; for many texts, one request each: [(task, text) for text in texts]"
                       if isinstance(text, (list, tuple)) else "")
                )
            if task not in self.tasks:
                raise ValueError(f"request {i} asks for unknown task {task!r}; this predictor serves: "
                                 f"{', '.join(self.tasks)}")
        lengths = [len(ids) for ids in self.tokenizer([text for _, text in requests])["input_ids"]] if requests else []
        too_long = [length > self.max_length for length in lengths]
        if any(too_long):
            first = too_long.index(True)
            message = (f"{sum(too_long)} of {len(requests)} texts are longer than max_length = {self.max_length} "
                       f"tokens (request {first}: {lengths[first]} tokens)")
            if self.truncation == "error":
                raise ValueError(f"{message}; shorten them, or serve with truncation='warn' to cut them")
            warnings.warn(f"{message}; they were cut to {self.max_length} tokens", stacklevel=3)
        return too_long

    def predict(self, requests: Sequence[tuple[str, str]], batch_size: int = 32) -> list[Prediction]:
        """One ``Prediction`` per (task, text) request, in order; mixed-task batches of ``batch_size``."""
        _check_count("batch_size", batch_size)
        too_long = self._check_requests(requests)
        predictions: list[Prediction | None] = [None] * len(requests)
        for start in range(0, len(requests), batch_size):
            chunk = requests[start : start + batch_size]
            with torch.no_grad():
                outputs = self.model([text for _, text in chunk], [task for task, _ in chunk])
            for task, (logits, positions) in outputs.items():
                for row, position in zip(logits, positions.tolist()):
                    i = start + position
                    predictions[i] = Prediction(task, int(row.argmax()), row, too_long[i])
        return predictions
