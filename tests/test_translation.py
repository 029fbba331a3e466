"""The Chinese edition (notebooks/zh/): the translation files, the build, the glossary, and the edition as committed.

The tests on the committed edition fail when an English markdown cell changed after its translation (stale),
when a Chinese notebook's code or outputs differ from the English one's, or when a glossary term is
translated another way: `mtl-tutorial translate` lists what to fix.
"""

import json
import re
from pathlib import Path

import nbformat
import pytest

from mtl_tutorial import cli
from mtl_tutorial.chapters import list_chapters, read_chapter_table
from mtl_tutorial.translation import (
    MISSING_NOTE,
    STALE_NOTE,
    TranslationError,
    append_entries,
    build,
    chinese_path,
    describe,
    english_notebooks,
    glossary_misses,
    notebook_text,
    read_glossary,
    read_translation,
    source_hash,
    translation_path,
)

ROOT = Path(__file__).resolve().parents[1]
ENGLISH = english_notebooks(ROOT)
TERMS = read_glossary(ROOT)
GLOSSARY = "## Glossary / 术语表\n\n| English | 中文 | in this course |\n|---|---|---|\n" \
           "| negative transfer | 负迁移 | a task worse beside another |\n| adapter | 适配器 | a bottleneck MLP |\n"


def _course(tmp_path: Path, *markdown: str) -> Path:
    """A tiny course folder: README.md with a glossary, notebooks/01_x.ipynb with ``markdown`` cells and a
    code cell with an output between them."""
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "README.md").write_text("# course\n\n" + GLOSSARY, encoding="utf-8")
    code = nbformat.v4.new_code_cell("print(1)", id="code1",
                                     outputs=[nbformat.v4.new_output("stream", name="stdout", text="1\n")])
    cells = [nbformat.v4.new_markdown_cell(text, id=f"md{i}") for i, text in enumerate(markdown)]
    notebook = nbformat.v4.new_notebook(cells=cells[:1] + [code] + cells[1:])
    nbformat.write(notebook, tmp_path / "notebooks" / "01_x.ipynb")
    return tmp_path


def _write_entries(course: Path, entries: dict[str, tuple[str, str]]) -> Path:
    """Translation file of 01_x: cell id -> (English it translates, Chinese text)."""
    path = translation_path(course / "notebooks" / "01_x.ipynb", course)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(f"<!-- cell {i} en {source_hash(en)} -->\n{zh}" for i, (en, zh) in entries.items()) + "\n",
                    encoding="utf-8")
    return path


# -- the machinery -------------------------------------------------------------------------------------


def test_a_translated_cell_replaces_the_markdown_and_code_and_outputs_stay_the_english_ones(tmp_path):
    course = _course(tmp_path, "# 01 · X\n\nAn adapter.", "Negative transfer, `adapter`.")
    _write_entries(course, {"md0": ("# 01 · X\n\nAn adapter.", "# 第 01 章 · X\n\n一个适配器。"),
                            "md1": ("Negative transfer, `adapter`.", "负迁移，`adapter`。")})
    english = course / "notebooks" / "01_x.ipynb"
    chinese, report = build(english, course)
    assert report.problems == 0 and report.translated == ["md0", "md1"]
    assert [c.source for c in chinese.cells] == ["# 第 01 章 · X\n\n一个适配器。", "print(1)", "负迁移，`adapter`。"]
    original = nbformat.read(english, as_version=4)
    assert chinese.cells[1] == original.cells[1]   # code and its outputs, untouched
    assert chinese.metadata["mtl_tutorial"]["translation"] == {"language": "zh-CN", "from": "01_x.ipynb"}
    assert chinese_path(english, course) == course / "notebooks" / "zh" / "01_x.ipynb"


def test_a_changed_english_cell_makes_its_translation_stale_and_the_chinese_says_so(tmp_path):
    course = _course(tmp_path, "The first version.")
    _write_entries(course, {"md0": ("An earlier version.", "较早的版本。")})
    chinese, report = build(course / "notebooks" / "01_x.ipynb", course)
    assert report.stale == ["md0"] and report.problems == 1
    assert chinese.cells[0].source == STALE_NOTE + "较早的版本。"


def test_missing_untranslated_orphaned_and_off_glossary_cells_are_each_listed(tmp_path):
    english = ["Negative transfer here.", "Left as it was.", "Not yet written."]
    course = _course(tmp_path, *english)
    _write_entries(course, {"md0": (english[0], "这里有迁移。"), "md1": (english[1], english[1]),
                            "gone": ("A cell the English dropped.", "旧的段落。")})
    chinese, report = build(course / "notebooks" / "01_x.ipynb", course)
    assert report.missing == ["md2"] and report.untranslated == ["md1"] and report.orphaned == ["gone"]
    assert report.glossary == ["md0: 'negative transfer' → 负迁移"]
    assert chinese.cells[-1].source == MISSING_NOTE + english[2]
    lines = "\n".join(describe(build(course / "notebooks" / "01_x.ipynb", course)[1], course))
    assert "missing       cell md2" in lines and "orphaned      cell gone" in lines and "untranslated  cell md1" in lines


def test_add_missing_writes_entries_that_read_back_with_the_english_hash(tmp_path):
    course = _course(tmp_path, "# Title", "Second cell.\n\nTwo paragraphs.")
    english = course / "notebooks" / "01_x.ipynb"
    append_entries(translation_path(english, course), {c.id: c.source for c in nbformat.read(english, as_version=4).cells
                                                        if c.cell_type == "markdown"})
    entries = read_translation(translation_path(english, course))
    assert {i: (e.en_hash, e.text) for i, e in entries.items()} == {
        "md0": (source_hash("# Title"), "# Title"), "md1": (source_hash("Second cell.\n\nTwo paragraphs."),
                                                            "Second cell.\n\nTwo paragraphs.")}
    assert build(english, course)[1].untranslated == ["md0", "md1"]   # still English: listed, not passed


@pytest.mark.parametrize("text, words", [
    ("stray text\n<!-- cell a en 0123456789ab -->\n中文", "text before the first"),
    ("<!-- cell a en 0123456789ab -->\n中文\n<!-- cell a en 0123456789ab -->\n又一次", "translated twice"),
    ("<!-- cell a en 01234 -->\n中文", "is not a marker"),
])
def test_a_broken_translation_file_names_the_line_and_the_fix(tmp_path, text, words):
    path = tmp_path / "x.md"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TranslationError, match=words) as raised:
        read_translation(path)
    assert f"{path}:" in str(raised.value)


def test_glossary_terms_count_in_prose_only_in_any_inflection():
    glossary = [("negative transfer", "负迁移"), ("prefix-tuning", "前缀微调"), ("adapter", "适配器")]
    assert glossary_misses("Adapters and prefix tuning.", "适配器。", glossary) == ["'prefix-tuning' → 前缀微调"]
    assert glossary_misses("`adapter` and $negative transfer$ and [x](adapter.ipynb)", "x", glossary) == []
    assert glossary_misses("Negative-transfer.", "负迁移。", glossary) == []


def test_the_glossary_gives_one_chinese_term_per_english_term(tmp_path):
    terms = read_glossary(ROOT)
    english = [en.lower() for en, _ in terms]
    assert len(english) == len(set(english)), "an English term has two rows"
    for term in ("positive transfer", "catastrophic forgetting", "temperature sampling", "mixture of experts",
                 "cross-stitch", "task affinity", "uncertainty weighting", "confidence interval",
                 "no measurable difference", "gloss", "supersense"):
        assert term in english, f"README's glossary lacks {term!r}"
    (tmp_path / "README.md").write_text(GLOSSARY + "| backbone | 骨干网络 / 主干模型 | x |\n", encoding="utf-8")
    with pytest.raises(TranslationError, match="gives two terms"):
        read_glossary(tmp_path)


# -- the edition as committed --------------------------------------------------------------------------


@pytest.mark.parametrize("english", ENGLISH, ids=lambda p: p.relative_to(ROOT / "notebooks").as_posix())
def test_the_chinese_edition_is_complete_current_and_rebuilt(english):
    chinese, report = build(english, ROOT, TERMS)
    assert report.problems == 0, "\n".join(describe(report, ROOT)) + "\n(fix them, then run mtl-tutorial translate)"
    committed = chinese_path(english, ROOT)
    assert committed.is_file(), f"{committed} is missing: run mtl-tutorial translate"
    assert committed.read_text(encoding="utf-8") == notebook_text(chinese), \
        f"{committed} is not the build of its translation: run mtl-tutorial translate"


@pytest.mark.parametrize("english", ENGLISH, ids=lambda p: p.relative_to(ROOT / "notebooks").as_posix())
def test_a_chinese_notebook_has_the_english_code_and_outputs(english):
    path = chinese_path(english, ROOT)
    if not path.is_file():
        pytest.fail(f"{path} is missing: run mtl-tutorial translate")
    chinese, original = nbformat.read(path, as_version=4), nbformat.read(english, as_version=4)
    assert [(c.id, c.cell_type) for c in chinese.cells] == [(c.id, c.cell_type) for c in original.cells]
    for ours, theirs in zip(chinese.cells, original.cells):
        if theirs.cell_type == "code":
            assert json.dumps(ours, sort_keys=True) == json.dumps(theirs, sort_keys=True), \
                f"{path}: code cell {theirs.id} differs from the English notebook's: run mtl-tutorial translate"
        elif re.search(r"[A-Za-z]{4,}", theirs.source):
            assert re.search(r"[\u4e00-\u9fff]", ours.source), f"{path}: cell {theirs.id} has no Chinese"


def test_every_chinese_chapter_title_names_its_chapter_and_the_article_sections():
    for english in ENGLISH:
        if english.parent.name != "notebooks":
            continue
        first = nbformat.read(chinese_path(english, ROOT), as_version=4).cells[0].source.splitlines()[0]
        number = english.name[:2]
        assert re.match(rf"# 第 {number} 章 · .+（原文 §\d", first), \
            f"{english.name}: the Chinese title {first!r} should read '# 第 {number} 章 · 标题（原文 §…）'"


def test_readme_zh_lists_every_chapter_with_the_english_runtimes_and_chinese_titles(capsys):
    english = {c.number: c for c in read_chapter_table(ROOT / "README.md")}
    chinese = {c.number: c for c in read_chapter_table(ROOT / "README.zh-CN.md")}
    assert chinese.keys() == english.keys()
    for number, chapter in chinese.items():
        assert chapter.runtimes == english[number].runtimes, f"chapter {number}: README.zh-CN.md's runtimes differ"
        assert re.search(r"[\u4e00-\u9fff]", chapter.title + chapter.learn), f"chapter {number}: no Chinese"
    paths = {c.number: c.path for c in list_chapters(ROOT, language="zh")}
    assert all(path is None or path.parent == ROOT / "notebooks" / "zh" for path in paths.values())
    assert cli.main(["list", "--lang", "zh"]) == 0
    out = capsys.readouterr().out
    for number, chapter in chinese.items():
        assert chapter.title in out
    assert "README.zh-CN.md" in (ROOT / "README.md").read_text(encoding="utf-8"), "README.md should link the Chinese one"


def test_readme_zh_shows_the_same_commands_as_readme():
    """Every command README.zh-CN.md shows in a code block is one README.md shows, or one of the Chinese
    edition's own (--lang zh, translate): what the English README's tested set-up runs, so does this."""
    def commands(path: Path) -> set[str]:
        blocks = re.findall(r"```(?:bash|sh|console)?\n(.*?)```", path.read_text(encoding="utf-8"), re.S)
        return {line.split("#")[0].strip() for block in blocks for line in block.splitlines() if line.split("#")[0].strip()}

    english, chinese = commands(ROOT / "README.md"), commands(ROOT / "README.zh-CN.md")
    own = {c for c in chinese if "--lang zh" in c or "translate" in c}
    assert chinese - own <= english, f"README.zh-CN.md shows commands README.md does not: {sorted(chinese - own - english)}"
    assert own, "README.zh-CN.md should show the Chinese edition's commands (--lang zh)"


def test_translate_check_passes_and_writes_nothing(capsys):
    before = {p: p.stat().st_mtime_ns for p in (ROOT / "notebooks" / "zh").rglob("*.ipynb")}
    assert cli.main(["translate", "--check", "01"]) == 0, capsys.readouterr().out
    assert "notebooks/zh/01_multitask_objective.ipynb" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (ROOT / "notebooks" / "zh").rglob("*.ipynb")} == before


def test_translate_refuses_a_name_it_does_not_know(capsys):
    assert cli.main(["translate", "--check", "notebooks/nope.ipynb"]) == 2
    assert "neither a chapter number" in capsys.readouterr().err


def test_assign_lang_zh_builds_chinese_student_versions_with_the_english_cell_ids(tmp_path):
    english, chinese = tmp_path / "en", tmp_path / "zh"
    assert cli.main(["assign", "--output", str(english), "06"]) == 0
    assert cli.main(["assign", "--output", str(chinese), "--lang", "zh", "06"]) == 0
    ours, theirs = (nbformat.read(folder / "06_gradient_alignment.ipynb", as_version=4) for folder in (chinese, english))
    assert [c.id for c in ours.cells] == [c.id for c in theirs.cells]
    def grading(cell):  # what grading reads; a locked cell's checksum covers its (translated) text
        return {k: v for k, v in cell.metadata.get("nbgrader", {}).items() if k != "checksum"}

    assert [grading(c) for c in ours.cells] == [grading(c) for c in theirs.cells]
    assert re.search(r"[\u4e00-\u9fff]", ours.cells[0].source)
    assert "### BEGIN SOLUTION" not in json.dumps(ours)


def test_an_inplace_run_rebuilds_the_chinese_edition_of_a_course_notebook(tmp_path, capsys):
    english = ROOT / "notebooks" / "01_multitask_objective.ipynb"
    before = chinese_path(english, ROOT).read_text(encoding="utf-8")
    cli._rebuild_chinese(english)   # what `mtl-tutorial run --inplace` calls after each notebook
    assert capsys.readouterr().out == ("notebooks/zh/01_multitask_objective.ipynb: the Chinese edition, rebuilt with "
                                       "these outputs\n")
    assert chinese_path(english, ROOT).read_text(encoding="utf-8") == before   # up to date: the same file
    outside = tmp_path / "01_x.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), outside)
    cli._rebuild_chinese(outside)   # not one of the course's notebooks: nothing to rebuild
    assert capsys.readouterr().out == ""


def test_translate_add_missing_writes_the_skeleton_and_check_then_lists_it_as_english(tmp_path, monkeypatch, capsys):
    course = _course(tmp_path, "# 01 · Getting started", "Negative transfer.")
    monkeypatch.setenv("MTL_TUTORIAL_ROOT", str(course))
    assert cli.main(["translate", "--add-missing"]) == 0   # rebuilds and writes, lists what is left
    english = course / "notebooks" / "01_x.ipynb"
    assert set(read_translation(translation_path(english, course))) == {"md0", "md1"}
    assert chinese_path(english, course).is_file()
    capsys.readouterr()
    assert cli.main(["translate", "--check"]) == 1
    out = capsys.readouterr().out
    assert "untranslated  cell md0" in out and "untranslated  cell md1" in out and "missing" not in out
