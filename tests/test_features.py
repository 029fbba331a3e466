"""The frozen-feature cache: miss computes, hit loads without the model, damage is recomputed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mtl_tutorial.features as features_module
from mtl_tutorial.backbone import encode, load_backbone
from mtl_tutorial.features import backbone_identity, cache_key, frozen_features

TEXTS = ["the drug worked well", "a member of the genus Canis", "move fast", "horrible side effects"]


@pytest.fixture(scope="module")
def backbone():
    return load_backbone()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("MTL_TUTORIAL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def encode_calls(monkeypatch) -> list[int]:
    """Count the texts that frozen_features sends to the encoder."""
    calls: list[int] = []

    def counting_encode(model, tokenizer, texts, **kwargs):
        calls.append(len(texts))
        return encode(model, tokenizer, texts, **kwargs)

    monkeypatch.setattr(features_module, "encode", counting_encode)
    return calls


def _cache_files(cache: Path) -> list[Path]:
    return sorted(cache.iterdir()) if cache.exists() else []


def test_miss_computes_the_mean_pooled_features_and_stores_them(backbone, cache, encode_calls) -> None:
    model, tokenizer = backbone
    features = frozen_features(TEXTS, model, tokenizer, max_length=32, progress=False)
    assert features.shape == (4, model.config.hidden_size) and features.dtype == torch.float32
    torch.testing.assert_close(features, encode(model, tokenizer, TEXTS, max_length=32))
    assert encode_calls == [4]
    assert [p.suffix for p in _cache_files(cache)] == [".safetensors"]  # no temporary file left


def test_hit_loads_without_calling_the_model(backbone, cache, monkeypatch) -> None:
    model, tokenizer = backbone
    first = frozen_features(TEXTS, model, tokenizer, max_length=32, progress=False)

    def refuse(*args, **kwargs):
        raise AssertionError("a cache hit must not run the encoder")

    monkeypatch.setattr(features_module, "encode", refuse)
    second = frozen_features(TEXTS, model, tokenizer, max_length=32, progress=False)   # `refuse` proves the hit
    assert torch.equal(first, second)


def test_default_backbone_is_loaded_only_on_a_miss(backbone, cache, monkeypatch) -> None:
    loads = []
    monkeypatch.setattr(features_module, "load_backbone", lambda: loads.append(1) or backbone)
    monkeypatch.setattr(features_module, "get_device", lambda: torch.device("cpu"))
    first = frozen_features(TEXTS[:2], max_length=32, progress=False)
    second = frozen_features(TEXTS[:2], max_length=32, progress=False)
    assert loads == [1] and torch.equal(first, second)


@pytest.mark.parametrize("damage", ["truncate", "flip_a_byte", "garbage", "empty"])
def test_a_damaged_cache_file_is_recomputed(backbone, cache, encode_calls, damage: str) -> None:
    model, tokenizer = backbone
    good = frozen_features(TEXTS, model, tokenizer, max_length=32, progress=False)
    [path] = _cache_files(cache)
    data = path.read_bytes()
    damaged = {
        "truncate": data[: len(data) // 2],
        "flip_a_byte": data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:],  # inside the tensor data
        "garbage": b"not a safetensors file" * 10,
        "empty": b"",
    }[damage]
    path.write_bytes(damaged)
    again = frozen_features(TEXTS, model, tokenizer, max_length=32, progress=False)
    assert encode_calls == [4, 4]  # recomputed, not read back
    assert torch.equal(again, good)
    frozen_features(TEXTS, model, tokenizer, max_length=32, progress=False)
    assert encode_calls == [4, 4]  # the entry was repaired: a hit again


def test_keys_change_with_texts_weights_and_settings(backbone) -> None:
    model, tokenizer = backbone
    identity = backbone_identity(model, tokenizer)
    key = cache_key(identity, "mean", 32, TEXTS)
    assert cache_key(backbone_identity(model, tokenizer), "mean", 32, TEXTS) == key
    assert cache_key(identity, "mean", 32, TEXTS[:3]) != key
    assert cache_key(identity, "mean", 32, TEXTS[::-1]) != key
    assert cache_key(identity, "mean", 64, TEXTS) != key
    assert cache_key(identity, "cls", 32, TEXTS) != key
    parameter = model.encoder.layer[-1].output.dense.weight
    with torch.no_grad():
        parameter[0, 0] += 1e-3  # one small fine-tuning step
        try:
            assert cache_key(backbone_identity(model, tokenizer), "mean", 32, TEXTS) != key
        finally:
            parameter[0, 0] -= 1e-3


def test_a_changed_backbone_gets_fresh_features(backbone, cache, encode_calls) -> None:
    model, tokenizer = backbone
    before = frozen_features(TEXTS, model, tokenizer, max_length=32, progress=False)
    bias = model.encoder.layer[-1].output.dense.bias
    with torch.no_grad():  # one entry: a constant added to every entry would vanish in the LayerNorm after it
        bias[0] += 0.5
        try:
            after = frozen_features(TEXTS, model, tokenizer, max_length=32, progress=False)
        finally:
            bias[0] -= 0.5
    assert encode_calls == [4, 4] and len(_cache_files(cache)) == 2
    assert not torch.allclose(before, after)


def test_cache_false_neither_reads_nor_writes(backbone, cache, encode_calls) -> None:
    model, tokenizer = backbone
    frozen_features(TEXTS[:1], model, tokenizer, max_length=32, progress=False, cache=False)
    frozen_features(TEXTS[:1], model, tokenizer, max_length=32, progress=False, cache=False)
    assert encode_calls == [1, 1] and _cache_files(cache) == []


def test_bad_arguments_raise(backbone) -> None:
    model, tokenizer = backbone
    with pytest.raises(ValueError, match="unknown pooling 'cls'; frozen_features supports: mean"):
        frozen_features(TEXTS, model, tokenizer, pooling="cls")
    with pytest.raises(ValueError, match="pass both model and tokenizer"):
        frozen_features(TEXTS, model)
    with pytest.raises(TypeError, match="not a single string"):
        frozen_features("one text", model, tokenizer)


def test_an_unwritable_cache_warns_and_still_returns_features(
    backbone, tmp_path: Path, monkeypatch
) -> None:
    model, tokenizer = backbone
    blocker = tmp_path / "a_file_not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("MTL_TUTORIAL_CACHE", str(blocker))
    with pytest.warns(UserWarning, match="could not write the feature cache.*MTL_TUTORIAL_CACHE"):
        features = frozen_features(TEXTS[:2], model, tokenizer, max_length=32, progress=False)
    torch.testing.assert_close(features, encode(model, tokenizer, TEXTS[:2], max_length=32))
