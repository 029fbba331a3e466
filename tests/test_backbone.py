import socket

import pytest
import torch

from mtl_tutorial.backbone import (
    DEFAULT_BACKBONE,
    BackboneUnavailableError,
    count_parameters,
    encode,
    load_backbone,
    mean_pool,
)


@pytest.fixture(scope="module")
def backbone():
    return load_backbone()


def test_default_backbone_is_the_shipped_minilm(backbone):
    model, tokenizer = backbone
    assert type(model).__name__ == "BertModel"
    assert count_parameters(model) == 22_713_216
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (6, 384)
    assert not model.training
    assert tokenizer("hello world")["input_ids"] == [101, 7592, 2088, 102]


def test_load_backbone_opens_no_network_connection(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"load_backbone() tried to open a network connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    model, _ = load_backbone()
    assert count_parameters(model) == 22_713_216


def test_unknown_backbone_offline_names_the_default(monkeypatch):
    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable (blocked by the test)")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(socket, "getaddrinfo", unreachable)
    with pytest.raises(BackboneUnavailableError, match=f"offline.*{DEFAULT_BACKBONE}"):
        load_backbone("no-such-org/no-such-model")


def _refuse_the_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a local path must not be looked up on the hub: {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.mark.parametrize(
    "name", ["/no/such/dir", "./no-such-dir", "../no-such-dir", "checkpoints/no-such-model"]
)
def test_a_missing_folder_is_named_as_missing_not_as_offline(monkeypatch, tmp_path, name):
    _refuse_the_network(monkeypatch)
    (tmp_path / "checkpoints").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BackboneUnavailableError, match="that folder does not exist") as failure:
        load_backbone(name)
    assert "hub" not in str(failure.value) and "offline default" in str(failure.value)


def test_a_file_is_not_a_checkpoint_folder(monkeypatch, tmp_path):
    _refuse_the_network(monkeypatch)
    (tmp_path / "model.bin").write_bytes(b"")
    with pytest.raises(BackboneUnavailableError, match="it is a file, not a folder"):
        load_backbone(str(tmp_path / "model.bin"))


def test_a_folder_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(BackboneUnavailableError, match="cannot load the backbone from"):
        load_backbone(tmp_path)


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(mean_pool(hidden, mask), torch.tensor([[2.0, 3.0]]))
    with pytest.raises(ValueError, match=r"\(B, L, H\)"):
        mean_pool(hidden[0], mask)


def test_encode_batches_give_the_same_embeddings(backbone):
    model, tokenizer = backbone
    texts = ["a short one", "a much longer sentence that needs more padding in its batch", "mid length text"]
    together = encode(model, tokenizer, texts, batch_size=3)
    one_by_one = encode(model, tokenizer, texts, batch_size=1)
    assert together.shape == (3, 384)
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=1e-4)
    with pytest.raises(TypeError, match="list of texts"):
        encode(model, tokenizer, "not a list")


def test_similar_sentences_are_closer(backbone):
    model, tokenizer = backbone
    e = encode(model, tokenizer, ["a cat sits on the mat", "a kitten rests on a rug", "stock prices fell sharply"])
    sim = torch.nn.functional.cosine_similarity(e[:, None], e[None], dim=-1)
    assert sim[0, 1] > 0.5 > sim[0, 2]
