"""Serving per-task PEFT files on one backbone: mixed batches, the files' checks, long texts."""

import copy

import pytest
import torch
from torch import nn

from mtl_tutorial.adapter import MultiTaskAdapterModel
from mtl_tutorial.backbone import backbone_fingerprint, load_backbone
from mtl_tutorial.lora import MultiTaskLoRAModel, lora_layers
from mtl_tutorial.models import TextEncoderTrunk
from mtl_tutorial.prefix import MultiTaskPrefixModel
from mtl_tutorial.serving import MultiTaskPredictor, read_task_file

TASKS = {"sentiment": 3, "pos": 4, "supersense": 5}
TEXTS = [
    "This medicine stopped my headaches within a week.",
    "a small carnivorous mammal that hunts at night",
    "to move quickly on foot",
    "Terrible side effects, I had to stop after two days.",
    "of or relating to the sea",
    "It worked, but I gained weight.",
]


@pytest.fixture(scope="module")
def backbone():
    return load_backbone()


def trained(model_class, backbone, seed=0, **kwargs):
    """A multi-task model with every trainable tensor randomised (as after training)."""
    encoder, tokenizer = backbone
    torch.manual_seed(seed)
    heads = {task: nn.Linear(384, n) for task, n in TASKS.items()}
    model = model_class(TextEncoderTrunk(copy.deepcopy(encoder), tokenizer, max_length=32), heads, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(std=0.05)
    return model.eval()


def save_all(model, folder):
    files = {}
    for task in model.tasks:
        files[task] = folder / f"{task}.safetensors"
        model.save_task(task, files[task])
    return files


REQUESTS = [(task, text) for text in TEXTS for task in TASKS][:14]


@pytest.mark.parametrize("model_class, kwargs", [
    (MultiTaskLoRAModel, {"r": 4, "alpha": 8}),
    (MultiTaskAdapterModel, {"bottleneck_size": 8, "placement": "pfeiffer"}),
    (MultiTaskPrefixModel, {"num_virtual_tokens": 3}),
])
def test_predictor_from_files_equals_each_task_model_on_mixed_batches(backbone, tmp_path, model_class, kwargs):
    model = trained(model_class, backbone, **kwargs)
    predictor = MultiTaskPredictor.from_files(save_all(model, tmp_path), *backbone, max_length=32)
    assert type(predictor.model) is model_class and predictor.tasks == tuple(TASKS)
    predictions = predictor.predict(REQUESTS, batch_size=5)  # batches of 5: every batch mixes tasks
    assert [p.task for p in predictions] == [task for task, _ in REQUESTS]
    with torch.no_grad():
        for (task, text), prediction in zip(REQUESTS, predictions):
            alone = model([text], task)[0]  # the trained model, this request alone
            torch.testing.assert_close(prediction.logits, alone, atol=1e-5, rtol=1e-5)
            assert prediction.label == int(alone.argmax()) and not prediction.truncated


def test_predictor_answers_a_mixed_batch_in_one_backbone_pass(backbone, tmp_path):
    model = trained(MultiTaskLoRAModel, backbone, r=4, alpha=8)
    predictor = MultiTaskPredictor(model)
    calls = []
    handle = model.trunk.encoder.register_forward_hook(lambda *_: calls.append(1))
    predictor.predict(REQUESTS, batch_size=len(REQUESTS))
    handle.remove()
    assert len(calls) == 1


def test_files_of_another_backbone_method_or_setting_are_refused(backbone, tmp_path):
    encoder, tokenizer = backbone
    lora = trained(MultiTaskLoRAModel, backbone, r=4, alpha=8)
    files = save_all(lora, tmp_path)
    assert read_task_file(files["pos"])[0]["backbone"] == backbone_fingerprint(encoder)
    other = copy.deepcopy(encoder)
    with torch.no_grad():
        other.get_input_embeddings().weight[0] += 1.0
    with pytest.raises(ValueError, match="trained on another backbone"):
        MultiTaskPredictor.from_files(files, other, tokenizer)
    adapters = trained(MultiTaskAdapterModel, backbone, bottleneck_size=8)
    adapters.save_task("pos", tmp_path / "pos_adapter.safetensors")
    with pytest.raises(ValueError, match=r"pos_adapter.safetensors \(task 'pos'\) was saved with format='mtl_tutorial.adapter"):
        MultiTaskPredictor.from_files({"sentiment": files["sentiment"], "pos": tmp_path / "pos_adapter.safetensors"},
                                      encoder, tokenizer)
    trained(MultiTaskLoRAModel, backbone, r=2, alpha=8).save_task("pos", tmp_path / "pos_r2.safetensors")
    with pytest.raises(ValueError, match="was saved with alpha|was saved with r='2'"):
        MultiTaskPredictor.from_files({"sentiment": files["sentiment"], "pos": tmp_path / "pos_r2.safetensors"},
                                      encoder, tokenizer)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MultiTaskPredictor.from_files({"pos": tmp_path / "missing.safetensors"}, encoder, tokenizer)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a task saved by save_task"):
        MultiTaskPredictor.from_files({"pos": tmp_path / "junk.safetensors"}, encoder, tokenizer)
    with pytest.raises(ValueError, match="files is empty"):
        MultiTaskPredictor.from_files({}, encoder, tokenizer)


def test_load_task_refuses_a_file_from_another_backbone(backbone, tmp_path):
    lora = trained(MultiTaskLoRAModel, backbone, r=4, alpha=8)
    lora.save_task("pos", tmp_path / "pos.safetensors")
    other = trained(MultiTaskLoRAModel, backbone, r=4, alpha=8)
    with torch.no_grad():
        other.trunk.encoder.get_input_embeddings().weight[3, 0] += 0.5
    with pytest.raises(ValueError, match=r"trained on another backbone \(fingerprint [0-9a-f]{16}"):
        other.load_task("pos", tmp_path / "pos.safetensors")


def test_unknown_tasks_and_malformed_requests_are_clear_errors(backbone):
    predictor = MultiTaskPredictor(trained(MultiTaskLoRAModel, backbone, r=4, alpha=8))
    with pytest.raises(ValueError, match="request 1 asks for unknown task 'sentimnet'; this predictor serves: sentiment, pos"):
        predictor.predict([("pos", "to run"), ("sentimnet", "great")])
    with pytest.raises(TypeError, match="wrap a single one"):
        predictor.predict(("pos", "to run"))
    with pytest.raises(TypeError, match="request 0 is 'to run'"):
        predictor.predict(["to run"])
    with pytest.raises(ValueError, match="truncation must be"):
        MultiTaskPredictor(predictor.model, truncation="cut")
    with pytest.raises(TypeError, match="serves a MultiTaskPEFTModel"):
        MultiTaskPredictor(nn.Linear(2, 2))
    assert predictor.predict([]) == []


def test_texts_over_the_length_limit_are_cut_with_a_warning_or_refused(backbone):
    model = trained(MultiTaskLoRAModel, backbone, r=4, alpha=8)
    long_text = " ".join(["headache"] * 60)
    requests = [("pos", "to run"), ("sentiment", long_text)]
    with pytest.warns(UserWarning, match=r"1 of 2 texts are longer than max_length = 32 tokens \(request 1: 62 tokens\)"):
        predictions = MultiTaskPredictor(model).predict(requests)
    assert [p.truncated for p in predictions] == [False, True]
    with torch.no_grad():
        torch.testing.assert_close(predictions[1].logits, model([long_text], "sentiment")[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="request 1: 62 tokens.*truncation='warn'"):
        MultiTaskPredictor(model, truncation="error").predict(requests)


def test_fingerprint_ignores_peft_layers_and_sees_the_embeddings(backbone):
    encoder, _ = backbone
    lora = trained(MultiTaskLoRAModel, backbone, r=4, alpha=8)
    assert lora_layers(lora.trunk) and backbone_fingerprint(lora.trunk) == backbone_fingerprint(encoder)
    assert backbone_fingerprint(nn.Linear(2, 2)) is None


@pytest.mark.parametrize("model_class, kwargs", [
    (MultiTaskLoRAModel, {"r": 4, "alpha": 8, "target_modules": ("query",)}),
    (MultiTaskLoRAModel, {"r": 2, "alpha": 2.5}),
    (MultiTaskAdapterModel, {"bottleneck_size": 8, "placement": "pfeiffer", "activation": "relu"}),
    (MultiTaskPrefixModel, {"num_virtual_tokens": 3, "projection_hidden": 16}),
])
def test_arguments_from_metadata_invert_task_metadata(backbone, model_class, kwargs):
    model = trained(model_class, backbone, **kwargs)
    arguments = model_class.arguments_from_metadata(model.task_metadata())
    assert {key: arguments[key] for key in kwargs} == kwargs
    assert trained(model_class, backbone, **arguments).task_metadata() == model.task_metadata()
