"""HardSharingModel: single-task forwards, routing of mixed batches, errors for misuse."""

import pytest
import torch
from torch import nn

from mtl_tutorial.models import HardSharingModel, TextEncoderTrunk, mlp, select_examples, train_top_layers


def make_model():
    torch.manual_seed(0)
    return HardSharingModel(mlp(5, 8), {"a": nn.Linear(8, 3), "b": nn.Linear(8, 2), "c": nn.Linear(8, 1)})


def test_single_task_forward_uses_the_trunk_and_that_head():
    model = make_model()
    x = torch.randn(4, 5)
    torch.testing.assert_close(model(x, "b"), model.heads["b"](model.trunk(x)))
    assert model.tasks == ("a", "b", "c")


def test_mixed_batch_routing_equals_per_task_forwards():
    model = make_model()
    x = torch.randn(7, 5)
    tasks = ["b", "a", "b", "c", "a", "a", "b"]
    routed = model(x, tasks)
    assert list(routed) == ["b", "a", "c"]  # order of first appearance
    for task, (outputs, positions) in routed.items():
        assert positions.tolist() == [i for i, t in enumerate(tasks) if t == task]
        torch.testing.assert_close(outputs, model(x[positions], task))


def test_unknown_task_lists_the_tasks():
    model = make_model()
    with pytest.raises(ValueError, match="unknown task 'd'; tasks are: a, b, c"):
        model(torch.randn(2, 5), "d")
    with pytest.raises(ValueError, match="unknown task 'd'; tasks are: a, b, c"):
        model(torch.randn(2, 5), ["a", "d"])


def test_tensor_of_task_ids_is_a_type_error_saying_what_to_pass():
    model = make_model()
    with pytest.raises(TypeError, match=r"got Tensor \[0, 1\].*map task ids to names"):
        model(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="task must be a task name"):
        model(torch.randn(2, 5), 0)


def test_wrong_number_of_task_names():
    with pytest.raises(ValueError, match="got 1 task names for a batch of 2 examples"):
        make_model()(torch.randn(2, 5), ["a"])


def test_select_examples_of_tensors_lists_and_dicts():
    positions = torch.tensor([2, 0])
    assert select_examples(["x", "y", "z"], positions) == ["z", "x"]
    selected = select_examples({"ids": torch.arange(3), "texts": ["x", "y", "z"]}, positions)
    assert selected["ids"].tolist() == [2, 0] and selected["texts"] == ["z", "x"]
    with pytest.raises(TypeError, match="cannot select examples from a int"):
        select_examples(3, positions)


def test_mlp_layers():
    net = mlp(4, 6, 2)
    assert [type(m) for m in net] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU]
    assert net(torch.zeros(3, 4)).shape == (3, 2)


class TinyEncoder(nn.Module):
    """Stands in for BertModel: embeddings, encoder.layer[...], last_hidden_state."""

    def __init__(self):
        super().__init__()
        self.embeddings = nn.Embedding(10, 4)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])

    def forward(self, input_ids, attention_mask):
        hidden = self.embeddings(input_ids)
        for layer in self.encoder.layer:
            hidden = layer(hidden)
        return type("Output", (), {"last_hidden_state": hidden})


def tiny_tokenizer(texts, padding, truncation, max_length, return_tensors):
    from transformers import BatchEncoding

    ids = [[len(word) % 10 for word in text.split()][:max_length] for text in texts]
    width = max(map(len, ids))
    return BatchEncoding(
        {
            "input_ids": torch.tensor([row + [0] * (width - len(row)) for row in ids]),
            "attention_mask": torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids]),
        }
    )


def test_text_trunk_mean_pools_real_tokens():
    encoder = TinyEncoder()
    trunk = TextEncoderTrunk(encoder, tiny_tokenizer, max_length=8)
    features = trunk(["a bb ccc", "dddd"])
    assert features.shape == (2, 4)
    alone = trunk(["dddd"])  # padding must not change an example's features
    torch.testing.assert_close(features[1:], alone)
    with pytest.raises(TypeError, match="list of texts"):
        trunk("a single string")


def test_train_top_layers_freezes_the_rest():
    encoder = train_top_layers(TinyEncoder(), 1)
    trainable = {name for name, p in encoder.named_parameters() if p.requires_grad}
    assert trainable == {"encoder.layer.2.weight", "encoder.layer.2.bias"}
    assert not any(p.requires_grad for p in train_top_layers(encoder, 0).parameters())
    with pytest.raises(ValueError, match="between 0 and 3"):
        train_top_layers(encoder, 4)
