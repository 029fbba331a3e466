import random
from pathlib import Path

import numpy as np
import pytest
import torch

import mtl_tutorial.runtime as runtime_module
from mtl_tutorial.runtime import by_mode, cache_dir, environment_summary, fast_mode, get_device, seed_everything


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("0", False), ("", False)])
def test_fast_mode_reads_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv("MTL_TUTORIAL_FAST", value)
    assert fast_mode() is expected
    assert by_mode(fast="small", full="large") == ("small" if expected else "large")


def test_fast_mode_unset_means_full(monkeypatch):
    monkeypatch.delenv("MTL_TUTORIAL_FAST", raising=False)
    assert fast_mode() is False


def test_fast_mode_rejects_unclear_values(monkeypatch):
    monkeypatch.setenv("MTL_TUTORIAL_FAST", "fastish")
    with pytest.raises(ValueError, match="MTL_TUTORIAL_FAST='fastish'.*set it to 1"):
        fast_mode()


def test_get_device_follows_the_override(monkeypatch):
    monkeypatch.setenv("MTL_TUTORIAL_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")


def test_get_device_default_prefers_cuda_then_cpu(monkeypatch):
    monkeypatch.delenv("MTL_TUTORIAL_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert get_device().type == expected


def test_get_device_rejects_a_bad_name(monkeypatch):
    monkeypatch.setenv("MTL_TUTORIAL_DEVICE", "gpu0")
    with pytest.raises(ValueError, match="is not a device; use cpu, cuda"):
        get_device()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_get_device_refuses_a_missing_gpu(monkeypatch):
    monkeypatch.setenv("MTL_TUTORIAL_DEVICE", "cuda")
    with pytest.raises(RuntimeError, match="sees no CUDA GPU"):
        get_device()


def test_seed_everything_makes_runs_repeatable():
    def draw():
        return random.random(), np.random.rand(), torch.randn(3)

    assert seed_everything(7) == 7
    first = draw()
    seed_everything(7)
    second = draw()
    assert first[0] == second[0] and first[1] == second[1]
    torch.testing.assert_close(first[2], second[2], rtol=0, atol=0)
    seed_everything(8)
    assert not torch.equal(draw()[2], first[2])


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0"])
def test_seed_everything_rejects_bad_seeds(seed):
    with pytest.raises(ValueError, match="non-negative int"):
        seed_everything(seed)


def test_environment_summary_names_versions_device_and_mode(monkeypatch):
    monkeypatch.setenv("MTL_TUTORIAL_FAST", "1")
    monkeypatch.setenv("MTL_TUTORIAL_DEVICE", "cpu")
    lines = dict(line.split(None, 1) for line in environment_summary().splitlines())
    assert lines["torch"] == torch.__version__
    assert lines["device"] == "cpu"
    assert lines["mode"] == "fast"
    assert {"python", "transformers", "peft"} <= set(lines)


def test_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MTL_TUTORIAL_CACHE", str(tmp_path / "here"))
    assert cache_dir() == tmp_path / "here"
    monkeypatch.delenv("MTL_TUTORIAL_CACHE")
    monkeypatch.setattr(runtime_module.sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "mtl_tutorial"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "mtl_tutorial"
    repo = Path(__file__).resolve().parents[1]
    assert repo not in cache_dir().resolve().parents
