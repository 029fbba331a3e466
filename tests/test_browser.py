"""The course in a real browser: every chapter with widgets runs clean in JupyterLab and its widgets work.

nbval runs the kernel side only, so a widget that does not render, or a slider that changes nothing,
would pass it. Here JupyterLab serves a temporary copy of the course (fast mode, no token, a free port)
and Debian's Chromium, driven headless by Playwright for Python, opens each chapter that imports
ipywidgets, runs all cells, checks that no cell failed, then moves every slider and dropdown and checks
that the figure or text it drives changes. A screenshot per chapter goes to build/browser/.

Without Chromium or Playwright the test is skipped (with the command that enables it); when the
environment variable CI is set a missing browser fails it instead, so CI cannot pass without it.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout, sync_playwright
except ImportError:
    sync_playwright = None

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "build" / "browser"
ENABLE = "install Chromium and Playwright for Python: `apt-get install chromium` and `pip install playwright`"
# A knob: a displayed widget whose kernel-side repr names a control this test can move. Progress bars
# (tqdm.auto draws them with ipywidgets) are widgets too, but nothing to operate.
KNOB = re.compile(r"\b\w*(Slider|Dropdown)\(")
# Chapters whose knob teaches (DESIGN.md): each must keep importing ipywidgets, so this test drives it.
# 02: the task correlation and data size behind each transfer estimate; 05: the weighting strategy whose
# losses and weights are shown; 06: CAGrad's c on the toy landscape; 07: the bottleneck size m; 09: the
# prefix run (parameterisation and step size) whose per-seed losses are shown.
KNOB_CHAPTERS = {"01", "02", "03", "04", "05", "06", "07", "08", "09", "11"}

ZH_CHAPTER = "07_adapter_tuning"  # the chapter of the Chinese edition opened in JupyterLab's Chinese interface
SERVER_START_S = 90  # JupyterLab writes its runtime file
KERNEL_READY_S = 120  # notebook open, kernel started and idle
RUN_ALL_S = 360  # a chapter in fast mode: ~35 s on a quiet 2-core CPU, several times that under load
STALLED_S = 20  # the kernel idle this long while cells wait: run-all stopped
WIDGET_S = 60  # a widget view appears, or a moved control redraws its output


def widget_chapters() -> list[Path]:
    """Chapter notebooks whose code imports ipywidgets."""
    imports_widgets = re.compile(r"^\s*(from|import)\s+ipywidgets\b", re.M)
    return [path for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
            if any(cell.cell_type == "code" and imports_widgets.search(cell.source)
                   for cell in nbformat.read(path, as_version=4).cells)]


def test_every_chapter_with_a_teaching_knob_is_driven_here():
    """Runs without a browser: a chapter that lost its widget import would drop out of the test below."""
    driven = {path.name[:2] for path in widget_chapters()}
    assert KNOB_CHAPTERS <= driven, f"chapters {sorted(KNOB_CHAPTERS - driven)} no longer import ipywidgets"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _unavailable(what: str):
    message = f"the browser test needs {what}; {ENABLE}"
    if _in_ci():
        pytest.fail(f"{message} (CI is set: .ci/run installs both, a skip here would hide broken widgets)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    if sync_playwright is None:
        _unavailable("Playwright for Python")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        _unavailable("a Chromium executable (`chromium` on PATH)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=executable, headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        try:
            yield chromium
        finally:
            chromium.close()


def _clean_copy(course: Path) -> None:
    """notebooks/ and data/ in ``course``, the widget chapters without outputs or saved widget state,
    so every output and widget the browser shows comes from this run."""
    shutil.copytree(ROOT / "notebooks", course / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copytree(ROOT / "data", course / "data")
    for path in [course / "notebooks" / chapter.name for chapter in widget_chapters()] + \
            [course / "notebooks" / "zh" / f"{ZH_CHAPTER}.ipynb"]:
        notebook = nbformat.read(path, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        notebook.metadata.pop("widgets", None)
        nbformat.write(notebook, path)


class Lab:
    """A JupyterLab server on a free localhost port, serving ``course``, stopped with its kernels."""

    def __init__(self, course: Path, home: Path, locale: str = "en"):
        settings = home / "settings"
        for plugin, values in {
            # every cell in the DOM, in order, so the test can index cells as the notebook does
            "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
            "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
            # the interface language (Settings > Language): "zh_CN" needs the zh-CN language pack
            "@jupyterlab/translation-extension/plugin": {"locale": locale},
        }.items():
            (settings / plugin).parent.mkdir(parents=True, exist_ok=True)
            (settings / f"{plugin}.jupyterlab-settings").write_text(json.dumps(values))
        runtime = home / "runtime"
        env = dict(os.environ, MTL_TUTORIAL_FAST="1", MTL_TUTORIAL_DATA=str(course / "data"),
                   OMP_NUM_THREADS="1",  # the browser and the server share the CPU with the kernel
                   JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(runtime),
                   JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"))
        self.log = (home / "jupyterlab.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", "--ServerApp.port=0",
             "--ServerApp.token=", "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
             "--ServerApp.allow_root=True", f"--ServerApp.root_dir={course}", "--LabApp.expose_app_in_browser=True"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        info = runtime / f"jpserver-{self.process.pid}.json"  # the server's url, port included
        deadline = time.monotonic() + SERVER_START_S
        while (url := self._url(info)) is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"JupyterLab did not start; its log:\n{(home / 'jupyterlab.log').read_text()[-3000:]}")
            time.sleep(0.5)
        self.url = url.rstrip("/")

    @staticmethod
    def _url(info: Path) -> str | None:
        try:
            return json.loads(info.read_text())["url"]
        except (OSError, ValueError, KeyError):  # not written yet, or half written
            return None

    def shut_down_kernels(self) -> None:
        """Shut down every kernel of this server (the one a chapter started), through its REST API."""
        with urllib.request.urlopen(f"{self.url}/api/kernels", timeout=30) as response:
            kernels = json.load(response)
        for kernel in kernels:
            request = urllib.request.Request(f"{self.url}/api/kernels/{kernel['id']}", method="DELETE")
            urllib.request.urlopen(request, timeout=30).close()

    def stop(self) -> None:
        """SIGTERM: the server shuts its kernels down; whatever is left of its process group is killed."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def lab(browser, tmp_path_factory):
    course = tmp_path_factory.mktemp("course")
    _clean_copy(course)
    server = Lab(course, tmp_path_factory.mktemp("jupyter"))
    try:
        yield server
    finally:
        server.stop()


# The open notebook's code cells as the notebook model holds them: errors whole, of other outputs only the
# text/plain of widget views (the kernel's repr, e.g. "VBox(children=(SelectionSlider(...), Output()))").
PANEL_JS = "[...window.jupyterapp.shell.widgets('main')].find(w => w.context && w.context.path === path)"
CODE_CELLS_JS = """path => {
  const panel = """ + PANEL_JS + """;
  const cells = panel.content.model.cells, code = [];
  for (let index = 0; index < cells.length; index++) {
    const cell = cells.get(index);
    if (cell.type !== 'code') continue;
    code.push({index, source: cell.sharedModel.getSource(), count: cell.executionCount,
               outputs: cell.outputs.toJSON().map(o => o.output_type === 'error'
                 ? {type: 'error', ename: o.ename, evalue: o.evalue, traceback: o.traceback}
                 : {type: o.output_type,
                    widget: (o.data || {})['application/vnd.jupyter.widget-view+json'] && o.data['text/plain']})});
  }
  return code;
}"""

# What a cell's widget Output areas show: every image's source and the text.
DRAWN_JS = """cell => [...cell.querySelectorAll('.widget-output')].map(out => ({
  images: [...out.querySelectorAll('img')].map(img => img.src), text: out.textContent}))"""

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _kernel_status(page, path: str) -> str:
    """The open notebook's kernel as its session reports it, in any interface language: 'Idle', 'Busy',
    'Dead', 'Unknown', ... ('' while the notebook has no session yet)."""
    status = page.evaluate(f"path => {{ const panel = {PANEL_JS}; "
                           "return panel ? panel.sessionContext.kernelDisplayStatus : ''; }", path)
    return (status or "").capitalize()


def _wait_for_kernel(page, path: str) -> None:
    deadline = time.monotonic() + KERNEL_READY_S
    while (status := _kernel_status(page, path)) != "Idle":
        if time.monotonic() > deadline:
            pytest.fail(f"{path}: the kernel was not ready after {KERNEL_READY_S} s (status bar: {status!r})")
        time.sleep(0.5)


def _run_all(page, path: str) -> list[dict]:
    """Run menu > Run All Cells; return the code cells once each has run and the kernel is idle."""
    page.evaluate("() => window.jupyterapp.commands.execute('runmenu:run-all')")
    deadline, idle_since = time.monotonic() + RUN_ALL_S, None
    while True:
        cells = page.evaluate(CODE_CELLS_JS, path)
        for cell in cells:
            for output in cell["outputs"]:
                if output["type"] == "error":
                    traceback = ANSI.sub("", "\n".join(output["traceback"]))
                    pytest.fail(f"{path}, cell {cell['index']} raised {output['ename']}: {output['evalue']}\n"
                                f"{traceback}")
        waiting = [cell["index"] for cell in cells if cell["count"] is None and cell["source"].strip()]
        status = _kernel_status(page, path)
        if status in ("Dead", "Unknown"):
            pytest.fail(f"{path}: the kernel died (status bar: {status!r}); cells not run: {waiting}")
        if status == "Idle" and not waiting:
            return cells
        idle_since = (idle_since or time.monotonic()) if status == "Idle" else None
        if idle_since and time.monotonic() - idle_since > STALLED_S:
            pytest.fail(f"{path}: the kernel is idle but cells {waiting} never ran")
        if time.monotonic() > deadline:
            pytest.fail(f"{path}: not done after {RUN_ALL_S} s; kernel {status!r}, cells not run: {waiting}")
        time.sleep(1)


def _settled(cell, describe: str) -> list[dict]:
    """The cell's Output widgets once they show something and have stopped changing (two looks 1 s apart)."""
    deadline, previous = time.monotonic() + WIDGET_S, None
    while True:
        areas = cell.evaluate(DRAWN_JS)
        if not areas:
            pytest.fail(f"{describe}: the widget drives no Output widget, so moving it cannot show anything")
        if areas == previous and any(area["images"] or area["text"].strip() for area in areas):
            return areas
        if time.monotonic() > deadline:
            pytest.fail(f"{describe}: the widget's output shows nothing, or keeps changing, after {WIDGET_S} s")
        previous = areas
        time.sleep(1)


def _operate(cell, describe: str, press, value) -> None:
    """Move one control with ``press`` and wait until the output it drives shows a new image (or new text);
    ``value()`` reads the control's value, to say which of the two failed."""
    before = _settled(cell, describe)
    kind = "images" if any(area["images"] for area in before) else "text"
    value_before = value()
    press()
    deadline = time.monotonic() + WIDGET_S
    while (after := [area[kind] for area in cell.evaluate(DRAWN_JS)]) == [area[kind] for area in before] \
            or not any(after):
        if time.monotonic() > deadline:
            moved = value() != value_before
            pytest.fail(f"{describe}: {'its value changed but ' if moved else ''}its output ({kind}) did not "
                        f"change within {WIDGET_S} s" + ("" if moved else "; the control itself did not move"))
        time.sleep(0.5)


def _check_widgets(page, path: str, cells: list[dict]):
    """Every knob rendered; each of its sliders and dropdowns changes what it drives. Returns the last knob's cell."""
    if "Error displaying widget" in (page.locator(".jp-NotebookPanel").text_content() or ""):
        pytest.fail(f"{path}: JupyterLab shows 'Error displaying widget'")
    widget_cells = [cell for cell in cells if any(KNOB.search(o.get("widget") or "") for o in cell["outputs"])]
    if not widget_cells:
        pytest.fail(f"{path} imports ipywidgets but displays no slider or dropdown; teach this test its widget")
    notebook_id = page.evaluate(f"path => {PANEL_JS}.content.node.id", path)
    dom_cells = page.locator(f"[id='{notebook_id}'] .jp-Cell")
    for cell in widget_cells:
        where = f"{path}, cell {cell['index']}"
        dom = dom_cells.nth(cell["index"])
        assert dom.locator(".jp-InputPrompt").text_content().strip() == f"[{cell['count']}]:", \
            f"{where}: the page's cells are not in the notebook's order"
        views = dom.locator(".jp-OutputArea-output .jupyter-widgets")
        try:
            views.first.wait_for(state="attached", timeout=WIDGET_S * 1000)
        except PlaywrightTimeout:
            shown = (dom.locator(".jp-OutputArea").text_content() or "").strip()
            pytest.fail(f"{where}: the widget did not render; the output area shows {shown[:300]!r}")
        sliders = dom.locator(".widget-slider")
        dropdowns = dom.locator(".widget-dropdown select")
        if sliders.count() + dropdowns.count() == 0:
            pytest.fail(f"{where}: a widget without a slider or dropdown; teach this test to operate it")
        for i in range(sliders.count()):
            slider = sliders.nth(i)
            handle = slider.locator(".noUi-handle").first
            at_max = handle.get_attribute("aria-valuenow") == handle.get_attribute("aria-valuemax")
            key = "ArrowLeft" if at_max else "ArrowRight"
            label = slider.locator(".widget-label").first.text_content()
            _operate(dom, f"{where}, slider {label!r} ({key})", lambda: handle.press(key),
                     lambda: handle.get_attribute("aria-valuenow"))
        for i in range(dropdowns.count()):
            select = dropdowns.nth(i)
            options = select.locator("option").all_text_contents()
            current = select.evaluate("s => s.selectedIndex")
            other = (current + 1) % len(options)
            _operate(dom, f"{where}, dropdown choice {options[other]!r}",
                     lambda: select.select_option(index=other), select.input_value)
    return dom_cells.nth(widget_cells[-1]["index"])


@pytest.mark.parametrize("chapter", widget_chapters(), ids=lambda path: path.stem)
def test_chapter_runs_in_jupyterlab_and_its_widgets_drive_their_output(chapter, browser, lab):
    path = f"notebooks/{chapter.name}"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    start, shown = time.monotonic(), None
    try:
        # a workspace of its own, so JupyterLab does not reopen the chapters checked before
        page.goto(f"{lab.url}/lab/workspaces/{chapter.stem}/tree/{path}", timeout=KERNEL_READY_S * 1000)
        page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=KERNEL_READY_S * 1000)
        _wait_for_kernel(page, path)
        cells = _run_all(page, path)
        ran = time.monotonic()
        shown = _check_widgets(page, path, cells)
        print(f"{chapter.stem}: ran in {ran - start:.0f} s, widgets checked in {time.monotonic() - ran:.0f} s")
    finally:
        try:
            if shown is not None:
                shown.scroll_into_view_if_needed()
            page.screenshot(path=SCREENSHOTS / f"{chapter.stem}.png")
        finally:
            context.close()
            lab.shut_down_kernels()


# Two characters drawn on a canvas in the font the rendered markdown uses: without a CJK font both come out as
# the same "tofu" box (or nothing), with one they differ.
GLYPHS_JS = """node => {
  const font = getComputedStyle(node).fontFamily, draw = text => {
    const canvas = document.createElement('canvas'); canvas.width = 64; canvas.height = 64;
    const context = canvas.getContext('2d'); context.font = `48px ${font}`; context.fillText(text, 4, 52);
    return Array.from(context.getImageData(0, 0, 64, 64).data);
  };
  const a = draw('学'), b = draw('习');
  return {font, inked: a.some(v => v > 0) && b.some(v => v > 0), differ: a.some((v, i) => v !== b[i])};
}"""


def test_a_chinese_chapter_renders_in_the_chinese_interface_and_its_widget_redraws(browser, tmp_path_factory):
    """The Chinese edition in JupyterLab switched to 中文 (zh-CN language pack): the menus are Chinese, the
    markdown renders real CJK glyphs (no tofu: needs a CJK font, Debian's fonts-noto-cjk), the chapter runs
    and its widget redraws. The screenshot stays in build/browser/."""
    course = tmp_path_factory.mktemp("course_zh")
    _clean_copy(course)
    lab = Lab(course, tmp_path_factory.mktemp("jupyter_zh"), locale="zh_CN")
    path = f"notebooks/zh/{ZH_CHAPTER}.ipynb"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    try:
        page.goto(f"{lab.url}/lab/workspaces/zh/tree/{path}", timeout=KERNEL_READY_S * 1000)
        page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=KERNEL_READY_S * 1000)
        menus = page.locator(".lm-MenuBar-itemLabel").all_text_contents()
        assert "文件" in menus, f"the interface is not in Chinese (menus: {menus}); is jupyterlab-language-pack-zh-CN installed?"
        heading = page.locator(".jp-MarkdownOutput h1").first
        heading.wait_for(timeout=WIDGET_S * 1000)
        assert heading.text_content().startswith(f"第 {ZH_CHAPTER[:2]} 章"), heading.text_content()
        glyphs = heading.evaluate(GLYPHS_JS)
        assert glyphs["inked"] and glyphs["differ"], \
            f"Chinese renders as tofu in {glyphs['font']!r}: install a CJK font (apt-get install fonts-noto-cjk)"
        page.screenshot(path=SCREENSHOTS / f"zh_{ZH_CHAPTER}_top.png")
        _wait_for_kernel(page, path)
        cells = _run_all(page, path)
        shown = _check_widgets(page, path, cells)
        shown.scroll_into_view_if_needed()
        page.screenshot(path=SCREENSHOTS / f"zh_{ZH_CHAPTER}.png")
    finally:
        context.close()
        lab.stop()
