"""Frozen-backbone sentence features, cached on disk so chapters that train only heads start fast.

``frozen_features(texts)`` encodes with the shipped MiniLM (mean pooling, see ``backbone.encode``)
the first time and loads the (N, H) tensor from the cache after that. A cache entry is keyed by

    sha256(backbone identity, pooling, max_length, sha256(texts))

where the identity of a backbone passed in is its class, config, tokenizer and a sha256 of its
weights, so a fine-tuned backbone never reads stale features; the shipped default backbone is
identified by its package version, so a cache hit does not even load it. The cache lives in
``runtime.cache_dir()``, outside the course folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from mtl_tutorial.backbone import DEFAULT_BACKBONE, DEFAULT_BACKBONE_PACKAGE, encode, load_backbone
from mtl_tutorial.runtime import cache_dir, get_device

POOLINGS = ("mean",)


def backbone_identity(model: nn.Module, tokenizer) -> dict:
    """What makes two backbones give the same features: class, config, tokenizer, weights.

    The weights enter as one sha256 over every parameter and buffer (name, dtype, shape, raw
    bytes): exact, so any training step changes it, and fast (~0.1 s for MiniLM's 22.7M weights).
    """
    config = getattr(model, "config", None)
    weights = hashlib.sha256()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        weights.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        weights.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return {
        "model": type(model).__name__,
        "config": config.to_dict() if config is not None else None,
        "tokenizer": [type(tokenizer).__name__, len(tokenizer)],
        "weights": weights.hexdigest(),
    }


def _default_backbone_identity() -> dict:
    """The shipped backbone, identified by its package version, so a cache hit never loads it."""
    return {"default": DEFAULT_BACKBONE, "package": DEFAULT_BACKBONE_PACKAGE,
            "version": metadata.version(DEFAULT_BACKBONE_PACKAGE)}


def cache_key(identity: dict, pooling: str, max_length: int, texts: Sequence[str]) -> str:
    """sha256 hex of the backbone identity, pooling, max_length and the sha256 of the texts."""
    texts_sha = hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode()).hexdigest()
    payload = json.dumps([identity, pooling, max_length, texts_sha], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _tensor_sha256(features: torch.Tensor) -> str:
    return hashlib.sha256(features.contiguous().numpy().tobytes()).hexdigest()


def _load_cached(path: Path, key: str, num_texts: int) -> torch.Tensor | None:
    """The cached (N, H) features, or None when the file is missing, truncated or corrupt."""
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            features = f.get_tensor("features")
    except (OSError, SafetensorError):
        return None
    if (meta.get("key") != key or features.dim() != 2 or features.shape[0] != num_texts
            or meta.get("sha256") != _tensor_sha256(features)):
        return None
    return features


def _save_atomically(path: Path, features: torch.Tensor, key: str) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    os.close(fd)
    try:
        save_file({"features": features.contiguous()}, tmp,
                  metadata={"key": key, "sha256": _tensor_sha256(features)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def frozen_features(
    texts: Sequence[str],
    model: nn.Module | None = None,
    tokenizer=None,
    *,
    batch_size: int = 64,
    max_length: int = 128,
    pooling: str = "mean",
    device: torch.device | str | None = None,
    progress: bool = True,
    cache: bool = True,
) -> torch.Tensor:
    """Sentence features of a frozen backbone: (N, H) float32 on the CPU, from the cache when possible.

    model, tokenizer: a backbone from ``load_backbone`` (both or neither; default: the shipped
    MiniLM, loaded only on a cache miss). pooling: ``"mean"`` (masked average of the token vectors).
    A cache file that is missing, truncated or does not match its stored checksum is recomputed.
    The default (no model) and an explicitly passed backbone are keyed differently (the first by
    package version, the second by its weights), so mixing the two styles encodes twice.
    """
    if isinstance(texts, str):
        raise TypeError("frozen_features expects a list of texts, not a single string; wrap it: [text]")
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; frozen_features supports: {', '.join(POOLINGS)}")
    if (model is None) != (tokenizer is None):
        raise ValueError(
            "pass both model and tokenizer (from load_backbone()), or neither for the default"
        )
    texts = list(texts)
    if cache:
        identity = _default_backbone_identity() if model is None else backbone_identity(model, tokenizer)
        key = cache_key(identity, pooling, max_length, texts)
        path = cache_dir() / f"{key}.safetensors"
        cached = _load_cached(path, key, len(texts))
        if cached is not None:
            return cached
    if model is None:
        model, tokenizer = load_backbone()
        model.to(device if device is not None else get_device())
    features = encode(model, tokenizer, texts, batch_size=batch_size, max_length=max_length,
                      device=device, progress=progress)
    if cache:
        try:
            _save_atomically(path, features, key)
        except (OSError, SafetensorError) as err:  # a read-only or full disk costs only the cache
            warnings.warn(f"could not write the feature cache ({err}); set MTL_TUTORIAL_CACHE "
                          f"to a writable folder", stacklevel=2)
    return features
