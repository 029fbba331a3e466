import asyncio
import hashlib
import importlib.metadata as metadata
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import zmq
import zmq.asyncio
from jupyter_client.session import Session

from mtl_tutorial import cli
from mtl_tutorial.chapters import (
    ChapterFailed,
    PatientShellChannel,
    recorded_mode,
    default_cell_timeout,
    list_chapters,
    project_root,
    read_chapter_table,
    resolve_chapters,
    run_notebook,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
CLI = [sys.executable, "-m", "mtl_tutorial.cli"]  # the command through this interpreter: no activated environment needed


def test_every_verb_has_help():
    for verb in ([], ["doctor"], ["list"], ["run"], ["bench"], ["assign"], ["grade"]):
        result = subprocess.run([*CLI, *verb, "--help"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "usage: mtl-tutorial" in result.stdout


def test_doctor_passes_offline_and_reports_the_backbone():
    result = subprocess.run([*CLI, "doctor"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ok       notebooks              {len(list((ROOT / 'notebooks').glob('*.ipynb')))} chapters in notebooks/\n" in result.stdout
    assert not [line for line in result.stdout.splitlines() if str(ROOT) in line]  # no absolute paths to paste into issues
    assert "all-MiniLM-L6-v2: 22.7M parameters, loaded in" in result.stdout
    assert "PROBLEM" not in result.stdout
    for package in ("torch", "transformers", "peft", "jupyterlab", "ipywidgets", "nbval"):
        assert f"ok       {package} " in result.stdout
    for task in ("sentiment", "condition", "supersense", "pos"):
        assert f"ok       task {task} " in result.stdout


def test_doctor_flags_a_missing_package_and_a_bad_mode(monkeypatch, capsys):
    real_version = metadata.version

    def version(name):
        if name == "peft":
            raise metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(metadata, "version", version)
    monkeypatch.setenv("MTL_TUTORIAL_FAST", "maybe")
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM  peft" in out and "pip install 'peft>=" in out
    assert "PROBLEM  mode" in out
    assert "2 problem(s): peft, mode" in out


def test_doctor_outside_the_course_folder_names_no_absolute_path(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "chapters in notebooks/ of the course folder" in out
    assert not [line for line in out.splitlines() if str(ROOT) in line]


def test_doctor_says_whether_the_decoder_is_in_the_cache_without_loading_it(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("MTL_TUTORIAL_CACHE", str(tmp_path))
    assert cli.main(["doctor"]) == 0
    assert "ok       decoder                SmolLM2-135M-Instruct: not fetched yet (study 12 fetches it once with pip, 93 MB)" \
        in capsys.readouterr().out
    (tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"0" * 3_000_000)
    assert cli.main(["doctor"]) == 0
    assert "ok       decoder                SmolLM2-135M-Instruct: in the cache (3 MB)" in capsys.readouterr().out


def test_doctor_flags_a_version_outside_the_range(monkeypatch, capsys):
    real_version = metadata.version
    monkeypatch.setattr(metadata, "version", lambda n: "5.24.0" if n == "transformers" else real_version(n))
    assert cli.main(["doctor"]) == 1
    assert "5.24.0 is installed but the course needs transformers<5.24" in capsys.readouterr().out


def test_list_shows_titles_and_readme_runtimes(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    chapter_00 = read_chapter_table(ROOT / "README.md")[0]
    line = next(line for line in out.splitlines() if line.startswith("00 "))
    assert "Getting started" in line and "00_getting_started.ipynb" in line
    assert chapter_00.runtimes["fast CPU"] in line


def test_a_planned_chapter_is_listed_before_its_notebook_exists(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "00_getting_started.ipynb").write_text("{}")
    (tmp_path / "README.md").write_text(
        "| NN | Chapter | What you learn | fast CPU | full CPU | full GPU |\n|---|---|---|---|---|---|\n"
        "| 00 | [Getting started](notebooks/00_getting_started.ipynb) | the map | 10 s | 10 s | n/a |\n"
        "| 01 | Later | what comes | planned | planned | planned |\n"
    )
    chapters = list_chapters(tmp_path)
    assert [(c.number, c.path is not None) for c in chapters] == [("00", True), ("01", False)]


def test_readme_table_covers_every_notebook_with_measured_runtimes():
    chapters = list_chapters(ROOT)
    numbers = [c.number for c in chapters]
    assert numbers == sorted(numbers) and numbers[0] == "00"
    on_disk = {p.name[:2] for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert on_disk <= set(numbers), "a notebook is missing from README.md's chapter table"
    for chapter in chapters:
        if chapter.path is not None:
            assert chapter.runtimes["fast CPU"] not in ("planned", "n/a"), chapter
            assert chapter.runtimes["full CPU"] not in ("planned", "n/a"), chapter


def test_resolve_chapters_names_the_valid_ones():
    assert resolve_chapters(["0"], ROOT)[0].name == "00_getting_started.ipynb"
    assert resolve_chapters(["00_getting_started"], ROOT)[0].name == "00_getting_started.ipynb"
    with pytest.raises(ValueError, match="unknown chapter '99'; chapters are: 00"):
        resolve_chapters(["99"], ROOT)
    assert project_root() == ROOT


def _digest(folder: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.glob("*.ipynb")))).hexdigest()


def test_run_fast_00_prints_the_timing_table_and_leaves_notebooks_alone(tmp_path):
    before = _digest(ROOT / "notebooks")
    result = subprocess.run(
        [*CLI, "run", "--fast", "--output", str(tmp_path), "00"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "00_getting_started" in result.stdout and "fast" in result.stdout
    assert "total" in result.stdout
    assert (tmp_path / "00_getting_started.ipynb").is_file()
    assert _digest(ROOT / "notebooks") == before


def test_run_stops_at_the_failing_cell_with_exit_1(tmp_path):
    notebook = tmp_path / "broken_chapter.ipynb"
    shutil.copy(FIXTURES / "broken_chapter.ipynb", notebook)
    out_dir = tmp_path / "out"
    result = subprocess.run(
        [*CLI, "run", "--fast", "--output", str(out_dir), str(notebook)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1
    assert "broken_chapter.ipynb failed in cell 3 (code cell 3): ZeroDivisionError" in result.stderr
    assert (out_dir / "broken_chapter.ipynb").is_file(), "the partly executed notebook must be kept"


def _run_fixture(tmp_path, name, *options):
    notebook = tmp_path / name
    shutil.copy(FIXTURES / name, notebook)
    result = subprocess.run(
        [*CLI, "run", *options, "--output", str(tmp_path / "out"), str(notebook)],
        capture_output=True, text=True, timeout=300,
    )
    return result, tmp_path / "out" / name


def _outputs(saved: Path) -> list[str]:
    """Each code cell's outputs as one string: stream text and error names."""
    notebook = nbformat.read(saved, as_version=4)
    return ["".join(o.get("text", o.get("ename", "")) for o in c.outputs)
            for c in notebook.cells if c.cell_type == "code"]


def test_a_cell_over_its_timeout_is_interrupted_and_reported_like_a_failing_cell(tmp_path):
    result, saved = _run_fixture(tmp_path, "slow_chapter.ipynb", "--timeout", "3")
    assert result.returncode == 1, result.stderr
    assert ("FAILED: slow_chapter.ipynb failed in cell 2 (code cell 2): still running after 3 s, "
            "the limit per cell") in result.stderr
    assert "Traceback" not in result.stderr and "kernel log noise" not in result.stderr  # the kernel's own log
    assert _outputs(saved) == ["first cell ran\n", "sleeping\nKeyboardInterrupt", ""]  # interrupted, kept


def test_a_dead_kernel_is_reported_with_its_cell(tmp_path):
    result, saved = _run_fixture(tmp_path, "dying_chapter.ipynb")
    assert result.returncode == 1, result.stderr
    assert "FAILED: dying_chapter.ipynb failed in cell 2 (code cell 2): the kernel died" in result.stderr
    assert "its last words on stderr: dying words" in result.stderr   # the kernel process's own stderr, quoted
    assert "Traceback" not in result.stderr and not result.stderr.startswith("dying words")
    assert _outputs(saved)[0] == "first cell ran\n"


def _tiny_notebook(path: Path, mode: str | None) -> Path:
    """A notebook of one cell that runs, holding a run of ``mode`` (None: never run)."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('ran')")])
    if mode is not None:
        notebook.metadata["mtl_tutorial"] = {"mode": mode}
    nbformat.write(notebook, path)
    return path


def test_a_failing_or_timed_out_inplace_run_leaves_the_notebook_byte_for_byte(tmp_path):
    for name, options in [("broken_chapter.ipynb", []), ("slow_chapter.ipynb", ["--timeout", "3"])]:
        notebook = tmp_path / name
        shutil.copy(FIXTURES / name, notebook)
        before = notebook.read_bytes()
        result = subprocess.run([*CLI, "run", "--fast", "--inplace", *options, "--output", str(tmp_path / "out"), str(notebook)],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 1, result.stderr
        assert notebook.read_bytes() == before, f"{name}: a failed --inplace run changed the notebook"
        assert f"{name} in place is unchanged" in result.stderr
        assert (tmp_path / "out" / name).is_file(), "what ran is kept in the partial copy"
        assert not list(tmp_path.glob(".*.tmp")), "no temporary file is left behind"


def test_the_partial_copy_leaves_every_cell_that_did_not_run_empty(tmp_path):
    notebook = nbformat.read(FIXTURES / "broken_chapter.ipynb", as_version=4)
    stale = nbformat.v4.new_output("stream", name="stdout", text="an output of an earlier run\n")
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [stale]
    nbformat.write(notebook, tmp_path / "broken_chapter.ipynb")
    result = subprocess.run([*CLI, "run", "--fast", "--output", str(tmp_path / "out"), str(tmp_path / "broken_chapter.ipynb")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert _outputs(tmp_path / "out" / "broken_chapter.ipynb") == ["first cell ran\n", "", "ZeroDivisionError", ""]


def test_an_inplace_run_of_the_other_mode_is_refused_unless_asked(tmp_path):
    notebook = _tiny_notebook(tmp_path / "full_chapter.ipynb", "full")
    before = notebook.read_bytes()
    result = subprocess.run([*CLI, "run", "--fast", "--inplace", str(notebook)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert ("error: full_chapter.ipynb holds a full-mode run; a fast-mode run would replace it. Run it in full mode "
            "(without --fast), or pass --change-mode to replace it on purpose") in result.stderr
    assert notebook.read_bytes() == before
    result = subprocess.run([*CLI, "run", "--fast", "--inplace", "--change-mode", str(notebook)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert recorded_mode(nbformat.read(notebook, as_version=4)) == "fast"
    assert _outputs(notebook) == ["ran\n"] and not list(tmp_path.glob(".*.tmp"))


def test_recorded_mode_reads_the_metadata_or_the_first_cells_mode_line():
    assert recorded_mode(nbformat.v4.new_notebook(metadata={"mtl_tutorial": {"mode": "fast"}})) == "fast"
    summary = nbformat.v4.new_output("stream", name="stdout", text="torch         2.13.0\nmode          full\n")
    assert recorded_mode(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("", outputs=[summary])])) == "full"
    assert recorded_mode(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])) is None
    assert recorded_mode(nbformat.read(ROOT / "notebooks" / "07_adapter_tuning.ipynb", as_version=4)) == "full"


def test_an_interrupted_run_says_so_in_one_line_exits_130_and_keeps_the_notebook(tmp_path):
    notebook = tmp_path / "slow_chapter.ipynb"
    shutil.copy(FIXTURES / "slow_chapter.ipynb", notebook)
    before = notebook.read_bytes()
    process = subprocess.Popen([*CLI, "run", "--fast", "--inplace", "--output", str(tmp_path / "out"), str(notebook)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, deadline = "", time.monotonic() + 120
    while "code cell 2 running" not in seen and time.monotonic() < deadline:   # tqdm's bar on stderr
        seen += process.stderr.read(1)
    process.send_signal(signal.SIGINT)   # what Ctrl-C sends
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, seen + stderr
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip() and "slow_chapter:" not in line]
    assert lines == [f"interrupted: slow_chapter.ipynb was interrupted in code cell 2; what ran is saved at "
                     f"{tmp_path / 'out' / 'slow_chapter.ipynb'}; slow_chapter.ipynb in place is unchanged"], stderr
    assert notebook.read_bytes() == before


def test_run_rejects_an_unclear_mode_before_starting_a_kernel(monkeypatch, capsys):
    monkeypatch.setenv("MTL_TUTORIAL_FAST", "2")
    assert cli.main(["run", "00"]) == 2
    assert capsys.readouterr().err == (
        "error: MTL_TUTORIAL_FAST='2' is not understood; set it to 1 (fast mode) or 0 (full mode)\n"
    )


@pytest.mark.parametrize("seconds", ["0", "-5", "soon"])
def test_run_rejects_a_timeout_that_is_not_positive_seconds(seconds, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--timeout", seconds, "00"])
    assert exit_info.value.code == 2
    assert f"--timeout: {seconds!r} is not a whole number of seconds >= 1" in capsys.readouterr().err


def test_the_default_cell_timeout_follows_the_mode_and_zero_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("MTL_TUTORIAL_FAST", "1")
    assert default_cell_timeout() == 600
    monkeypatch.setenv("MTL_TUTORIAL_FAST", "0")
    assert default_cell_timeout() == 1800
    with pytest.raises(ValueError, match="positive number of seconds"):  # nbclient: 0 = wait forever
        run_notebook(FIXTURES / "broken_chapter.ipynb", tmp_path / "x.ipynb", timeout=0, progress=False)


def test_a_kernel_that_never_starts_fails_before_the_first_cell(monkeypatch, tmp_path):
    fake = tmp_path / "fake_kernel"
    fake.mkdir()
    (fake / "ipykernel_launcher.py").write_text("raise SystemExit(3)\n")  # shadows the real kernel
    monkeypatch.setenv("PYTHONPATH", str(fake))
    result, saved = _run_fixture(tmp_path, "broken_chapter.ipynb")
    assert result.returncode == 1, result.stderr
    assert ("FAILED: broken_chapter.ipynb failed before its first cell: the kernel stopped answering "
            "(Kernel died") in result.stderr
    assert "Traceback" not in result.stderr, "nothing may raise at exit either"
    assert saved.is_file()


def test_run_notebook_waits_on_the_patient_shell_channel(tmp_path, monkeypatch):
    waits = []
    patient_get_msg = PatientShellChannel.get_msg

    async def counted_get_msg(self, timeout=None):
        waits.append(timeout)
        return await patient_get_msg(self, timeout)

    monkeypatch.setattr(PatientShellChannel, "get_msg", counted_get_msg)
    with pytest.raises(ChapterFailed) as failure:
        run_notebook(FIXTURES / "broken_chapter.ipynb", tmp_path / "broken.ipynb", timeout=60, progress=False)
    assert (failure.value.cell_index, failure.value.code_cell_number) == (3, 3)
    assert failure.value.error == "ZeroDivisionError: division by zero"
    assert (tmp_path / "broken.ipynb").is_file()
    assert 60 in waits, "each cell's reply must be awaited through PatientShellChannel"


def test_patient_shell_channel_finds_a_reply_whose_wake_up_a_send_swallowed():
    """nbclient's widget updates are raw sends on the shell socket while it waits there for a reply
    (nbclient #312): a reply that lands just before such a send is left unseen by a stock
    AsyncZMQSocketChannel until its timeout (here 10 s)."""

    async def scenario():
        kernel = zmq.Context.instance().socket(zmq.ROUTER)
        client = zmq.asyncio.Context.instance().socket(zmq.DEALER)
        try:
            client.connect(f"tcp://127.0.0.1:{kernel.bind_to_random_port('tcp://127.0.0.1')}")
            session = Session(key=b"secret")
            channel = PatientShellChannel(client, session)
            channel.send(session.msg("execute_request", {"code": "1"}))
            identity = kernel.recv_multipart()[0]
            waiting = asyncio.ensure_future(channel.get_msg(timeout=10))
            await asyncio.sleep(0.1)  # the wait now watches the socket's file descriptor
            session.send(kernel, "execute_reply", {"status": "ok"}, ident=identity)
            time.sleep(0.3)  # the reply reaches the client socket; the event loop does not run
            channel.send(session.msg("comm_msg", {}))  # swallows the wake-up the reply raised
            start = time.perf_counter()
            reply = await waiting
            return reply["msg_type"], time.perf_counter() - start
        finally:
            client.close(linger=0)
            kernel.close(linger=0)

    msg_type, seconds = asyncio.run(scenario())
    assert msg_type == "execute_reply"
    assert seconds < 2


def test_doctor_reports_each_gpu_with_its_memory_and_bf16_support_and_the_distributed_backends(monkeypatch):
    import types

    import torch

    gpus = [types.SimpleNamespace(name="NVIDIA H200", total_memory=141 * 2**30, major=9),
            types.SimpleNamespace(name="Tesla T4", total_memory=15 * 2**30, major=7)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: gpus[index])
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: True)
    assert cli.gpus_and_backends() == [
        ("gpu 0", "NVIDIA H200, 141.0 GiB, bf16 yes"),
        ("gpu 1", "Tesla T4, 15.0 GiB, bf16 no (train with precision='fp16')"),
        ("distributed backends", f"gloo {'yes' if torch.distributed.is_gloo_available() else 'no'}, nccl yes, "
                                 f"mpi {'yes' if torch.distributed.is_mpi_available() else 'no'}"),
    ]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.gpus_and_backends()[0] == ("gpu", "none (training runs on the CPU; precision='bf16' works there too)")


def test_doctor_prints_the_gpu_and_backend_lines(capsys):
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    for label, value in cli.gpus_and_backends():
        assert f"  ok       {label:<22} {value}" in out
