"""The study runner: one line per finished run, resumable after a kill, nothing run twice."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mtl_tutorial.studies import STUDY_MODULES, get_study, load_study, reproduction_verdict, run_configs, run_study
from mtl_tutorial.studies import runner
from mtl_tutorial.studies.prefix_tuning import exercise_one_configs
from mtl_tutorial.studies.runner import config_hash, read_rows
from mtl_tutorial.studies.text_runs import steps_for

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
import tiny_study  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def clean_code(monkeypatch):
    monkeypatch.setattr(runner, "code_provenance", lambda root=None: {"commit": "abc", "code_changed": False})


def test_a_killed_study_resumes_without_losing_or_repeating_a_run(tmp_path, monkeypatch, clean_code):
    path, log = tmp_path / "99_tiny.jsonl", tmp_path / "runs.log"
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import tiny_study; "
              "from mtl_tutorial.studies import runner; "
              "runner.code_provenance = lambda root=None: {'commit': 'abc', 'code_changed': False}; "
              "from pathlib import Path; runner.run_study(tiny_study.STUDY, path=Path(sys.argv[2]), progress=False)")
    env = {**os.environ, "RUN_LOG": str(log), "RUN_SECONDS": "0.4"}
    child = subprocess.Popen([sys.executable, "-c", script, str(FIXTURES), str(path)], env=env)
    deadline = time.time() + 60
    while len(read_rows(path)) < 2 and time.time() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)   # half-way: the third run is in progress
    child.wait()
    finished = read_rows(path)
    assert 2 <= len(finished) < 6
    with open(path, "a") as file:
        file.write('{"study": "99_tiny", "config": {"lab')   # a line torn by the kill
    monkeypatch.setenv("RUN_LOG", str(log))
    rows = run_study(tiny_study.STUDY, path=path, progress=False)
    assert [r["config"]["label"] + str(r["config"]["seed"]) for r in rows] == ["a0", "b0", "a1", "b1", "a2", "b2"]
    on_disk = read_rows(path)
    assert len(on_disk) == 6 and len({r["config_hash"] for r in on_disk}) == 6
    assert on_disk[:len(finished)] == finished   # nothing finished was lost or rewritten
    executed = log.read_text().split("\n")[:-1]
    # each run executed once, except at most the one killed in progress
    assert len(executed) - len(set(executed)) <= 1 and len(set(executed)) == 6
    assert run_study(tiny_study.STUDY, path=path, progress=False) == rows   # all done: nothing runs
    assert len(log.read_text().split("\n")[:-1]) == len(executed)


def test_a_changed_config_reruns_only_what_changed(tmp_path, monkeypatch, clean_code):
    path, log = tmp_path / "99_tiny.jsonl", tmp_path / "runs.log"
    monkeypatch.setenv("RUN_LOG", str(log))
    run_study(tiny_study.STUDY, path=path, progress=False)
    log.unlink()
    changed = tiny_study.STUDY.__class__(**{**tiny_study.STUDY.__dict__, "grid": lambda seeds, fast=False: [
        {**c, "scale": 3.0} if c["label"] == "b" and c["seed"] == 1 else c for c in tiny_study.grid(seeds)]})
    rows = run_study(changed, path=path, progress=False)
    assert log.read_text() == "b 1\n" and rows[3]["metrics"]["scores"]["t"] == 3.0
    assert len(read_rows(path)) == 7   # the old line stays; load_study takes the grid's lines
    assert load_study(changed, path=path).rows == rows


def test_the_label_does_not_change_the_hash_and_the_line_records_its_provenance(tmp_path, clean_code):
    assert config_hash({"label": "x", "seed": 1}) == config_hash({"label": "y", "seed": 1})
    assert config_hash({"seed": 1, "a": 2}) == config_hash({"a": 2, "seed": 1}) != config_hash({"seed": 2, "a": 2})
    row = run_study(tiny_study.STUDY, path=tmp_path / "99_tiny.jsonl", progress=False)[0]
    assert row["commit"] == "abc" and row["code_changed"] is False and row["threads"] >= 1
    assert {"torch", "transformers", "peft", "mtl_tutorial"} <= set(row["versions"]) and row["device"]
    with pytest.raises(TypeError, match="JSON values"):
        config_hash({"seed": object()})


def test_uncommitted_code_is_refused_unless_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "code_provenance", lambda root=None: {"commit": "abc", "code_changed": True})
    with pytest.raises(RuntimeError, match="uncommitted changes"):
        run_study(tiny_study.STUDY, path=tmp_path / "x.jsonl", progress=False)
    rows = run_study(tiny_study.STUDY, path=tmp_path / "x.jsonl", progress=False, allow_uncommitted=True)
    assert all(row["code_changed"] for row in rows)
    assert "WARNING: 6 run(s) ran with uncommitted code changes" in load_study(tiny_study.STUDY, tmp_path / "x.jsonl").describe()


def test_borrowed_runs_are_copied_not_rerun(tmp_path, monkeypatch, clean_code):
    log = tmp_path / "runs.log"
    monkeypatch.setenv("RUN_LOG", str(log))
    run_study(tiny_study.STUDY, path=tmp_path / "99_tiny.jsonl", progress=False)
    log.unlink()
    borrower = tiny_study.STUDY.__class__(**{**tiny_study.STUDY.__dict__, "slug": "borrower", "borrow_from": ("99_tiny",),
                                             "grid": lambda seeds, fast=False: tiny_study.grid(seeds) + [
                                                 {"label": "c", "seed": s, "scale": 5.0} for s in seeds]})
    rows = run_study(borrower, path=tmp_path / "99_borrower.jsonl", progress=False)
    assert log.read_text() == "c 0\nc 1\nc 2\n"
    assert [r.get("borrowed_from") for r in rows[:6]] == ["99_tiny.jsonl"] * 6 and rows[0]["study"] == "99_borrower"


def test_dry_run_prints_the_grid_and_runs_nothing(tmp_path, capsys, clean_code):
    assert run_study(tiny_study.STUDY, path=tmp_path / "t.jsonl", dry_run=True) == []
    out = capsys.readouterr().out
    assert "6 runs, 0 done, 0 to borrow from no other study, 6 to run" in out and not (tmp_path / "t.jsonl").exists()


def test_load_study_names_what_is_missing_and_a_damaged_line(tmp_path, clean_code):
    path = tmp_path / "99_tiny.jsonl"
    with pytest.raises(FileNotFoundError, match="mtl-tutorial study 99"):
        load_study(tiny_study.STUDY, path)
    run_study(tiny_study.STUDY, seeds=[0], path=path, progress=False)
    with pytest.raises(ValueError, match="lacks 4 of the study's 6 runs"):
        load_study(tiny_study.STUDY, path)
    path.write_text("not json\n" + path.read_text())
    with pytest.raises(ValueError, match="line 1: not a JSON line"):
        read_rows(path)


def test_results_read_back_by_label_and_task(tmp_path, clean_code):
    run_study(tiny_study.STUDY, path=tmp_path / "99_tiny.jsonl", progress=False)
    results = load_study(tiny_study.STUDY, tmp_path / "99_tiny.jsonl")
    assert results.labels() == ["a", "b"] and results.seeds() == [0, 1, 2]
    assert results.scores() == {"a": {"t": [0.0, 1.0, 4.0]}, "b": {"t": [0.0, 2.0, 8.0]}}
    with pytest.raises(ValueError, match="runs are: a, b"):
        results.select("c")
    assert "99_tiny.jsonl: 6 runs (2 runs x 3 seeds)" in results.describe()


def test_reproduction_verdict_counts_test_examples(tmp_path, clean_code):
    study_rows = run_study(tiny_study.STUDY, path=tmp_path / "99_tiny.jsonl", progress=False)
    rerun = run_configs(tiny_study.STUDY, [study_rows[4]["config"], study_rows[5]["config"]], progress=False,
                        keep_models=True)
    assert rerun[0]["model"] == "model"
    assert reproduction_verdict(study_rows, rerun) == (
        "reproduced 2 of 2 runs: every task's test accuracy within 1 test example of the study's")
    rerun[1]["metrics"] = {"correct": {"t": 11}}   # b, seed 2 scored 8
    assert reproduction_verdict(study_rows, rerun) == (
        "reproduced 1 of 2 runs within 1 test example; not reproduced: b, seed 2 (off by 3 examples)")
    with pytest.raises(ValueError, match="not in the study"):
        reproduction_verdict(study_rows[:2], rerun)


def test_the_chapter_studies_have_primary_comparisons_of_their_own_runs_and_five_seeds():
    for chapter in ("07", "08", "09", "10"):
        study = get_study(chapter)
        labels = {config["label"] for config in study.configs()}
        assert 1 <= len(study.primary) <= 3 and len(study.default_seeds) >= 5
        assert all({c.a, c.b} <= labels for c in study.primary)
        assert all(config["epochs"] >= 1 for config in study.configs())
        fast_labels = {config["label"] for config in study.grid((0, 1), fast=True)}   # fast mode prints the primaries too
        assert all({c.a, c.b} <= fast_labels for c in study.primary), chapter
    with pytest.raises(ValueError, match=f"studies exist for chapters: {', '.join(STUDY_MODULES)}"):
        get_study("01")  # a closed-form chapter: it needs no study


def test_chapters_10_and_08_borrow_the_runs_they_share_config_for_config():
    seven = {config_hash(c) for c in get_study("07").configs()}
    ten = [c for c in get_study("10").configs() if config_hash(c) in seven]
    assert sorted({c["method"] for c in ten}) == ["Houlsby adapters", "Pfeiffer adapters", "frozen features",
                                                   "full fine-tuning"]
    tens = {config_hash(c) for c in get_study("10").configs()}
    eight = [c for c in get_study("08").configs() if config_hash(c) in tens]
    assert sorted({c["label"] for c in eight}) == ["LoRA r=16", "LoRA r=4", "LoRA r=8", "frozen features", "shared LoRA r=8"]
    nine = [c for c in get_study("09").configs() if config_hash(c) in tens]
    assert sorted({c["label"] for c in nine}) == ["frozen features", "prefix-tuning", "prompt tuning"]
    assert len(nine) == 3 * len(get_study("09").default_seeds)


def test_chapter_09s_runs_change_the_direct_prefix_in_one_or_two_settings_each():
    study, exercises = get_study("09"), get_study("09", exercises=True)
    direct = next(c for c in study.configs() if c["label"] == "prefix-tuning" and c["seed"] == 0)
    expected = {"prefix-tuning": set(), "reparameterised prefix, lr 0.01": {"projection_hidden"},
                "reparameterised prefix, lr 0.001": {"projection_hidden", "body_lr"}, "direct prefix, lr 0.001": {"body_lr"},
                "prefix-tuning, top layer": {"prefix_layers"}, "prefix-tuning, peft's positions": {"position_offset"}}
    runs = [c for c in study.configs(seeds=[0]) if c["method"] == "prefix-tuning"] + [
        c for c in exercises.configs(seeds=[0]) if c["method"] == "prefix-tuning"]
    assert sorted(c["label"] for c in runs) == sorted(expected)
    for config in runs:
        changed = {k for k in set(config) | set(direct) if k != "label" and config.get(k) != direct.get(k)}
        assert changed == expected[config["label"]], config["label"]
    assert len(exercises.configs()) == 3 * len(study.default_seeds)
    prompt = next(c for c in study.configs() if c["label"] == "prompt tuning" and c["seed"] == 0)   # exercise 2
    longer = next(c for c in exercises.configs(seeds=[0]) if c["method"] == "prompt tuning")
    assert {k for k in set(prompt) | set(longer) if k != "label" and prompt.get(k) != longer.get(k)} == {"num_virtual_tokens"}
    assert longer["num_virtual_tokens"] * 384 == 10 * 6 * 2 * 384   # as many numbers as one task's prefix at P = 10
    first_steps = exercise_one_configs([0, 1])   # exercise 1: 30 steps of the direct prefix, random and real-word starts
    assert [steps_for(c) for c in first_steps] == [30] * 4 and [c["seed"] for c in first_steps] == [0, 0, 1, 1]
    random_start, real_words = first_steps[:2]
    assert {k for k in set(random_start) | set(real_words) if random_start.get(k) != real_words.get(k)} == {"label", "prefix_words"}
    assert {k for k in set(random_start) | set(direct) if random_start.get(k) != direct.get(k)} == {"epochs"}


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "notebooks" / "results").glob("*.jsonl")))
def test_committed_results_were_produced_by_committed_code(name):
    rows = read_rows(ROOT / "notebooks" / "results" / name)
    assert rows and all(row["code_changed"] is False for row in rows), f"{name}: a run with uncommitted code"
    commits = {row["commit"] for row in rows}
    assert all(isinstance(c, str) and len(c) == 40 for c in commits), f"{name}: a run without a git commit: {commits}"
    shallow = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=ROOT, capture_output=True, text=True)
    if shallow.stdout.strip() == "true":
        return   # a shallow clone lacks the older commits; the full history is checked where it exists
    for commit in commits:
        known = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT, capture_output=True)
        assert known.returncode == 0, f"{name}: commit {commit} is not in this repository's history"


def test_the_study_command_dry_run_prints_the_grid_and_its_time(capsys):
    from mtl_tutorial.cli import main

    assert main(["study", "07", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "study 07_adapter_tuning" in out and "40 runs" in out and "min on a 2-core CPU" in out
    assert main(["study", "10", "--dry-run", "--seeds", "2"]) == 0
    assert "20 runs" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [(["study", "01"], "has no study; studies exist for chapters: 02, "),
                                               (["study", "07", "--seeds", "1"], "--seeds must be >= 2"),
                                               (["study", "07", "--device", "cuda:7"], "")])
def test_the_study_command_refuses_bad_input_with_a_message(argv, message, capsys):
    from mtl_tutorial.cli import main

    if argv[-1] == "cuda:7" and __import__("torch").cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    assert main(argv + ["--dry-run"] if "--device" not in argv else argv + ["--allow-uncommitted"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_chapter_07s_exercise_runs_are_houlsby_adapters_changed_in_one_setting_each():
    study, exercises = get_study("07"), get_study("07", exercises=True)
    houlsby = next(c for c in study.configs() if c["label"] == "Houlsby adapters" and c["seed"] == 0)
    for config in exercises.configs(seeds=[0]):
        changed = {k for k in set(config) | set(houlsby) if k != "label" and config.get(k) != houlsby.get(k)}
        assert len(changed) == 1, config
    assert len(exercises.configs()) == 4 * len(study.default_seeds)
    with pytest.raises(ValueError, match="no study of its worked solutions"):
        get_study("10", exercises=True)


def test_one_thread_run_runs_on_one_thread_restores_the_count_and_drops_the_model_unless_asked():
    import torch

    from mtl_tutorial.studies.runner import one_thread_run

    seen = []

    def fit(config):
        seen.append(torch.get_num_threads())
        if config.get("fail"):
            raise RuntimeError("a run failed")
        return {"score": config["seed"]}, "the model"

    before = torch.get_num_threads()
    run = one_thread_run({"fit": fit})
    assert run({"kind": "fit", "seed": 3}) == ({"score": 3}, None)
    assert run({"kind": "fit", "seed": 3}, keep_model=True) == ({"score": 3}, "the model")
    with pytest.raises(RuntimeError, match="a run failed"):
        run({"kind": "fit", "seed": 0, "fail": True})
    assert seen == [1, 1, 1] and torch.get_num_threads() == before
    assert one_thread_run(fit)({"seed": 5}) == ({"score": 5}, None), "a single run function needs no kind"


def test_a_copy_without_git_proves_its_code_with_the_manifest_written_in_the_checkout(tmp_path):
    from mtl_tutorial.studies.provenance import MANIFEST, code_provenance, write_manifest

    checkout = tmp_path / "checkout"
    (checkout / "mtl_tutorial").mkdir(parents=True)
    (checkout / "mtl_tutorial" / "a.py").write_text("x = 1\n")
    (checkout / "pyproject.toml").write_text("[project]\n")
    git = lambda *args: subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=checkout,
                                       check=True, capture_output=True, text=True).stdout.strip()
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "one")
    (checkout / "mtl_tutorial" / "a.py").write_text("x = 2\n")
    with pytest.raises(RuntimeError, match="uncommitted changes"):
        write_manifest(checkout)
    git("checkout", "--", ".")
    write_manifest(checkout)
    copy = tmp_path / "copy"   # what a GPU machine receives: the files, no .git
    shutil.copytree(checkout, copy, ignore=shutil.ignore_patterns(".git"))
    assert code_provenance(copy) == {"commit": git("rev-parse", "HEAD"), "code_changed": False}
    (copy / "mtl_tutorial" / "b.py").write_text("y = 1\n")
    assert code_provenance(copy)["code_changed"] is True, "a Python file the manifest lacks"
    (copy / "mtl_tutorial" / "b.py").unlink()
    (copy / "mtl_tutorial" / "a.py").write_text("x = 3\n")
    assert code_provenance(copy)["code_changed"] is True, "a changed file"
    (copy / MANIFEST).unlink()
    assert code_provenance(copy) == {"commit": None, "code_changed": None}, "no manifest: an installed copy"
    with pytest.raises(RuntimeError, match="is not a git checkout"):
        write_manifest(copy)
