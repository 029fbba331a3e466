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


# --- mislabelled and damaged files, and every argument a learner can get wrong ---------------------


def test_swapped_files_are_refused_naming_both_tasks(backbone, tmp_path):
    files = save_all(trained(MultiTaskLoRAModel, backbone, r=4, alpha=8), tmp_path)
    swapped = {"sentiment": files["sentiment"], "pos": files["supersense"], "supersense": files["pos"]}
    with pytest.raises(ValueError, match=r"file .*supersense.safetensors holds task 'supersense' but was given for 'pos'; "
                                         r"give each task the file save_task wrote for it \(are two files swapped\?\)"):
        MultiTaskPredictor.from_files(swapped, *backbone, max_length=32)
    with pytest.raises(ValueError, match=r"pos.safetensors holds task 'pos' but was given for 'verb'; give each task the "
                                         r"file save_task wrote for it$"):
        MultiTaskPredictor.from_files({"verb": files["pos"]}, *backbone, max_length=32)
    from safetensors.torch import load_file, save_file

    metadata, _ = read_task_file(files["pos"])
    save_file(load_file(str(files["pos"])), str(tmp_path / "unnamed.safetensors"), {k: v for k, v in metadata.items() if k != "task"})
    with pytest.raises(ValueError, match=r"unnamed.safetensors holds no task name but was given for 'pos'"):
        MultiTaskPredictor.from_files({"pos": tmp_path / "unnamed.safetensors"}, *backbone, max_length=32)


def test_a_damaged_file_is_refused_by_from_files(backbone, tmp_path):
    files = save_all(trained(MultiTaskLoRAModel, backbone, r=4, alpha=8), tmp_path)
    data = bytearray(files["pos"].read_bytes())
    data[-1] ^= 0x01  # one bit of the last tensor's last number
    files["pos"].write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"pos.safetensors is damaged: its tensors do not match the checksum"):
        MultiTaskPredictor.from_files(files, *backbone, max_length=32)


@pytest.fixture(scope="module")
def lora_files(backbone, tmp_path_factory):
    model = trained(MultiTaskLoRAModel, backbone, r=4, alpha=8)
    return model, save_all(model, tmp_path_factory.mktemp("lora_files"))


@pytest.mark.parametrize("change, error, message", [
    (lambda a: a | {"files": list(a["files"].values())}, TypeError, r"files must map each task to its file, e.g. "
                                                                    r"\{'pos': 'pos.safetensors'\}; got list"),
    (lambda a: a | {"files": a["files"]["pos"]}, TypeError, r"files must map each task to its file.*got \w*Path"),
    (lambda a: a | {"files": {}}, ValueError, "files is empty"),
    (lambda a: a | {"files": {0: a["files"]["pos"]}}, ValueError, "task names must be non-empty strings without '.', got 0"),
    (lambda a: a | {"files": {"pos": 3}}, TypeError, r"files\['pos'\] must be a file path \(str or pathlib.Path\), got int"),
    (lambda a: a | {"files": {"pos": a["files"]["pos"].parent}}, IsADirectoryError,
     r"is a folder, not a task file; pass the path of the file save_task wrote \(this folder holds: pos.safetensors, "),
    (lambda a: a | {"backbone": (a["backbone"], a["tokenizer"])}, TypeError, r"unpack it: from_files\(files, \*load_backbone\(\)\)"),
    (lambda a: a | {"backbone": "sentence-transformers/all-MiniLM-L6-v2"}, TypeError,
     r"backbone must be the pretrained encoder \(an nn.Module\), e.g. load_backbone\(\)\[0\]; got str"),
    (lambda a: a | {"backbone": a["model"].trunk.encoder}, ValueError, "backbone already holds multi-task PEFT layers"),
    (lambda a: a | {"tokenizer": None}, TypeError, r"tokenizer must be the backbone's tokenizer .*got NoneType"),
    (lambda a: a | {"max_length": 0}, ValueError, "max_length must be >= 1, got 0"),
    (lambda a: a | {"max_length": True}, TypeError, "max_length must be an int >= 1, got bool True"),
    (lambda a: a | {"max_length": 32.0}, TypeError, "max_length must be an int >= 1, got float 32.0"),
    (lambda a: a | {"max_length": 1000}, ValueError, "max_length = 1000 tokens is more than the backbone's 512 positions"),
    (lambda a: a | {"truncation": "cut"}, ValueError, "truncation must be 'warn' .* or 'error' .*, got 'cut'"),
    (lambda a: a | {"truncation": None}, ValueError, "truncation must be 'warn' .* or 'error' .*, got None"),
])
def test_from_files_refuses_each_bad_argument_clearly(backbone, lora_files, change, error, message):
    model, files = lora_files
    arguments = change({"files": files, "backbone": backbone[0], "tokenizer": backbone[1], "model": model})
    arguments.pop("model")
    with pytest.raises(error, match=message):
        MultiTaskPredictor.from_files(**arguments)


@pytest.fixture(scope="module")
def predictor(backbone):
    return MultiTaskPredictor(trained(MultiTaskLoRAModel, backbone, r=4, alpha=8))


@pytest.mark.parametrize("requests, error, message", [
    ({"pos": "to run"}, TypeError, r"requests is a dict; pass a list of \(task, text\) pairs, e.g. list\(requests.items\(\)\)"),
    ("to run", TypeError, r"requests must be a list of \(task, text\) pairs, got str 'to run'$"),
    ((r for r in [("pos", "to run")]), TypeError, r"requests must be a list .* got generator .*; e.g. list\(requests\)"),
    (None, TypeError, "requests must be a list of .* got NoneType"),
    (["to run", "to walk"], TypeError, r"request 0 is 'to run'; .* for one task and many texts: \[\(task, text\) for"),
    ([("pos", "to run", "fast")], TypeError, r"request 0 is \('pos', 'to run', 'fast'\); each request is a \(task, text\) pair"),
    ([("pos", "to run"), ("to walk", "pos")], TypeError,
     r"request 1 is \('to walk', 'pos'\), a \(text, task\) pair; each request is \(task, text\): \('pos', 'to walk'\)"),
    ([(1, "to run")], TypeError, r"request 0 has task 1 \(int\); a task is its name, one of: sentiment, pos, supersense"),
    ([("pos", None)], TypeError, "request 0 has a NoneType as its text; a text is one string$"),
    ([("pos", 3.5)], TypeError, "request 0 has a float as its text"),
    ([("pos", ["to run", "to walk"])], TypeError, r"has a list as its text; .*one request each: \[\(task, text\) for text in texts\]"),
    ([("pos", "to run"), ("POS", "to walk")], ValueError, "request 1 asks for unknown task 'POS'; this predictor serves: sentiment"),
])
def test_predict_refuses_each_malformed_request_clearly(predictor, requests, error, message):
    with pytest.raises(error, match=message):
        predictor.predict(requests)


@pytest.mark.parametrize("batch_size, error, message", [
    (0, ValueError, "batch_size must be >= 1, got 0"),
    (-4, ValueError, "batch_size must be >= 1, got -4"),
    (True, TypeError, "batch_size must be an int >= 1, got bool True"),
    (2.0, TypeError, "batch_size must be an int >= 1, got float 2.0"),
    ("8", TypeError, "batch_size must be an int >= 1, got str '8'"),
])
def test_predict_refuses_a_bad_batch_size(predictor, batch_size, error, message):
    with pytest.raises(error, match=message):
        predictor.predict([("pos", "to run")], batch_size=batch_size)


def test_predict_still_takes_tuples_lists_and_numpy_batch_sizes(predictor):
    import numpy as np

    requests = [("pos", "to run"), ["sentiment", "It worked."], ("supersense", "")]
    expected = predictor.predict(requests)
    assert [p.task for p in predictor.predict(tuple(requests), batch_size=np.int64(2))] == ["pos", "sentiment", "supersense"]
    for one_by_one, together in zip(predictor.predict(tuple(requests), batch_size=1), expected):
        torch.testing.assert_close(one_by_one.logits, together.logits, atol=1e-5, rtol=1e-5)


def test_the_predictor_constructor_refuses_bad_arguments(predictor):
    for truncation in ("cut", None, ["warn"]):
        with pytest.raises(ValueError, match=r"truncation must be 'warn' \(cut and warn\) or 'error' \(refuse\)"):
            MultiTaskPredictor(predictor.model, truncation=truncation)
    with pytest.raises(TypeError, match="serves a MultiTaskPEFTModel on a TextEncoderTrunk, got HardSharingModel on a Linear"):
        from mtl_tutorial.models import HardSharingModel

        MultiTaskPredictor(HardSharingModel(nn.Linear(2, 2), {"pos": nn.Linear(2, 2)}))


def test_read_task_file_refuses_what_is_not_a_task_file(tmp_path):
    with pytest.raises(TypeError, match="path must be the path of a task file .* got dict"):
        read_task_file({"pos": tmp_path / "pos.safetensors"})
    with pytest.raises(IsADirectoryError, match="is a folder, not a task file"):
        read_task_file(tmp_path)
    with pytest.raises(FileNotFoundError, match="pos.safetensors: the file does not exist"):
        read_task_file(tmp_path / "pos.safetensors")
