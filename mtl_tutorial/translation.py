"""The Chinese edition (中文版): ``notebooks/zh/`` built from the English notebooks and one translation file each.

A translation file ``notebooks/zh/translations/<path under notebooks/>.md`` (e.g.
``translations/solutions/07_adapter_tuning_solutions.md``) holds, for every markdown cell of the English
notebook, a marker line and then the cell's Chinese text, up to the next marker::

    <!-- cell 3709294b en 1a2b3c4d5e6f -->
    # 第 00 章 · 入门（原文 §1、§2、§3.3）

``cell`` is the English cell's id; ``en`` is ``source_hash`` of the English text it translates (the first
12 hex digits of its SHA-256), so an entry whose English changed since it was written is *stale*. Code
cells and their outputs are copied from the English notebook as committed: the Chinese edition needs no
run of its own. Terms follow the one glossary, README.md's "Glossary / 术语表" table: where an English
cell uses a term (outside code and math), its translation uses the Chinese term of that row.

    mtl-tutorial translate            rebuild notebooks/zh/, list stale, missing and off-glossary cells
    mtl-tutorial translate --check    the same list, writing nothing; exit 1 if anything is listed
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from mtl_tutorial.runtime import project_root

EDITION = "zh"  # notebooks/zh/
LANGUAGE = "zh-CN"
MARKER = re.compile(r"^<!-- cell (?P<id>[A-Za-z0-9_-]+) en (?P<hash>[0-9a-f]{12}) -->\s*$")
STALE_NOTE = "> ⚠️ 这一段的英文原文在翻译之后改过，译文可能已过时。\n\n"
MISSING_NOTE = "> （这一段还没有译文，下面是英文原文。）\n\n"
GLOSSARY_HEADING = "## Glossary / 术语表"
_NOT_PROSE = re.compile(r"```.*?```|`[^`\n]*`|\$\$.*?\$\$|\$[^$\n]*\$|\]\([^)]*\)|https?://\S+|<[^>\n]*>", re.S)


class TranslationError(ValueError):
    """A translation file or the glossary cannot be read; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class Entry:
    """One translated cell: the English cell's id, the hash of the English it translates, the Chinese text."""

    cell_id: str
    en_hash: str
    text: str
    line: int  # the marker's line in the translation file (1-based)


@dataclass
class Report:
    """What building one Chinese notebook found. Each list holds cell ids (``glossary``: messages)."""

    english: Path
    markdown: dict[str, str] = field(default_factory=dict)  # the English markdown cells: id -> source
    translated: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # English markdown cells with no entry
    stale: list[str] = field(default_factory=list)  # entries whose English changed since
    untranslated: list[str] = field(default_factory=list)  # entries that still hold the English text
    orphaned: list[str] = field(default_factory=list)  # entries for cells the English no longer has
    glossary: list[str] = field(default_factory=list)  # "cell id: 'term' is not translated as 术语"

    @property
    def problems(self) -> int:
        return sum(len(x) for x in (self.missing, self.stale, self.untranslated, self.orphaned, self.glossary))


def source_hash(source: str) -> str:
    """First 12 hex digits of the SHA-256 of an English cell's source (UTF-8): what an entry's ``en`` records."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:12]


def english_notebooks(root: Path | None = None) -> list[Path]:
    """The notebooks the Chinese edition translates: chapters, worked solutions and assignments, in order."""
    from mtl_tutorial.chapters import CHAPTER_FILE

    notebooks = (root or project_root()) / "notebooks"
    chapters = sorted(p for p in notebooks.glob("*.ipynb") if CHAPTER_FILE.match(p.name))
    return chapters + sorted((notebooks / "solutions").glob("*.ipynb")) + sorted((notebooks / "assignments").glob("*.ipynb"))


def _relative(english: Path, root: Path) -> Path:
    try:
        return english.resolve().relative_to((root / "notebooks").resolve())
    except ValueError:
        raise TranslationError(f"{english} is not under {root / 'notebooks'}; the Chinese edition translates "
                               "the course's own chapters, solutions and assignments") from None


def chinese_path(english: Path, root: Path | None = None) -> Path:
    """``notebooks/x.ipynb`` -> ``notebooks/zh/x.ipynb`` (solutions/ and assignments/ keep their folder)."""
    root = root or project_root()
    return root / "notebooks" / EDITION / _relative(english, root)


def translation_path(english: Path, root: Path | None = None) -> Path:
    """``notebooks/x.ipynb`` -> ``notebooks/zh/translations/x.md``, the file its translation lives in."""
    root = root or project_root()
    return (root / "notebooks" / EDITION / "translations" / _relative(english, root)).with_suffix(".md")


def read_translation(path: Path) -> dict[str, Entry]:
    """Entries of one translation file, by cell id (a missing file has none)."""
    if not path.is_file():
        return {}
    entries: dict[str, Entry] = {}
    current: tuple[str, str, int] | None = None
    lines: list[str] = []

    def close() -> None:
        if current is not None:
            cell_id, en_hash, line = current
            if cell_id in entries:
                raise TranslationError(f"{path}:{line}: cell {cell_id} is translated twice (also at line "
                                       f"{entries[cell_id].line}); keep one entry per cell")
            entries[cell_id] = Entry(cell_id, en_hash, "\n".join(lines).strip("\n"), line)

    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        match = MARKER.match(text)
        if match:
            close()
            current, lines = (match["id"], match["hash"], number), []
        elif text.startswith("<!-- cell "):
            raise TranslationError(f"{path}:{number}: {text.strip()!r} is not a marker; write "
                                   "'<!-- cell CELL_ID en HASH12 -->' (mtl-tutorial translate --add-missing writes them)")
        elif current is None:
            if text.strip():
                raise TranslationError(f"{path}:{number}: text before the first '<!-- cell ... -->' marker; "
                                       "every paragraph belongs to a cell")
        else:
            lines.append(text)
    close()
    return entries


def append_entries(path: Path, sources: Mapping[str, str]) -> None:
    """Append an entry holding the English text for each cell of ``sources`` (id -> English markdown), to be
    translated in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = path.read_text(encoding="utf-8").rstrip("\n") + "\n\n" if path.is_file() else ""
    added = "\n\n".join(f"<!-- cell {cell_id} en {source_hash(text)} -->\n{text}" for cell_id, text in sources.items())
    path.write_text(existing + added + "\n", encoding="utf-8")


def read_glossary(root: Path | None = None) -> list[tuple[str, str]]:
    """README.md's glossary rows as (English term, Chinese term), one Chinese term per English term."""
    readme = (root or project_root()) / "README.md"
    text = readme.read_text(encoding="utf-8")
    if GLOSSARY_HEADING not in text:
        raise TranslationError(f"{readme} has no '{GLOSSARY_HEADING}' section; the Chinese edition's terms live there")
    terms: list[tuple[str, str]] = []
    for line in text.split(GLOSSARY_HEADING, 1)[1].splitlines()[1:]:
        if line.startswith("## "):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or cells[0] in ("English", "") or set(cells[0]) <= set("-: "):
            continue
        english, chinese = re.sub(r"\s*\([^)]*\)", "", cells[0]), cells[1]
        if "/" in chinese or "/" in english:
            raise TranslationError(f"{readme}: glossary row {line.strip()!r} gives two terms; one row per term, "
                                   "one Chinese term for it")
        terms.append((english, chinese))
    return terms


@functools.lru_cache(maxsize=None)
def _term_pattern(english: str) -> re.Pattern:
    words = [re.escape(word) for word in re.split(r"[- ]", english)]
    return re.compile(r"\b" + r"[- ]".join(words) + r"(s|es)?\b", re.I)


def glossary_misses(english: str, chinese: str, glossary: list[tuple[str, str]]) -> list[str]:
    """English terms of ``glossary`` used in ``english`` prose (outside code, math, links, tags) whose Chinese
    term ``chinese`` lacks: ``["'negative transfer' → 负迁移", ...]``."""
    prose = _NOT_PROSE.sub(" ", english)
    return [f"'{en}' → {zh}" for en, zh in glossary if _term_pattern(en).search(prose) and zh not in chinese]


def build(english: Path, root: Path | None = None,
          glossary: list[tuple[str, str]] | None = None) -> tuple[Any, Report]:
    """The Chinese notebook of ``english`` and what its translation file lacks.

    Markdown cells take their entry's text (a stale entry gets ``STALE_NOTE`` above it; a missing one keeps
    the English under ``MISSING_NOTE``); every other cell, outputs and metadata are the English notebook's.
    glossary: ``read_glossary(root)`` when None (pass it in when building many notebooks).
    """
    import copy

    import nbformat

    root = root or project_root()
    notebook = nbformat.read(english, as_version=4)
    entries = read_translation(translation_path(english, root))
    glossary = read_glossary(root) if glossary is None else glossary
    report = Report(english)
    chinese = copy.deepcopy(notebook)
    ids = set()
    for cell in chinese.cells:
        ids.add(cell.id)
        if cell.cell_type != "markdown":
            continue
        report.markdown[cell.id] = cell.source
        entry = entries.get(cell.id)
        if entry is None:
            report.missing.append(cell.id)
            cell.source = MISSING_NOTE + cell.source
            continue
        report.translated.append(cell.id)
        if entry.en_hash != source_hash(cell.source):
            report.stale.append(cell.id)
        if entry.text.strip() == cell.source.strip() and re.search(r"[A-Za-z]{3,}", cell.source):
            report.untranslated.append(cell.id)
        report.glossary += [f"{cell.id}: {miss}" for miss in glossary_misses(cell.source, entry.text, glossary)]
        cell.source = (STALE_NOTE if cell.id in report.stale else "") + entry.text
    report.orphaned = sorted(set(entries) - ids)
    chinese.metadata.setdefault("mtl_tutorial", {})["translation"] = {
        "language": LANGUAGE, "from": _relative(english, root).as_posix(),
    }
    return chinese, report


def notebook_text(notebook: Any) -> str:
    """A built Chinese notebook as it is written to disk (nbformat's JSON, one final newline): the text that
    ``translate --check`` and the tests compare with the committed file."""
    import nbformat

    return nbformat.writes(notebook).rstrip("\n") + "\n"


def describe(report: Report, root: Path | None = None) -> list[str]:
    """A report as lines for the command: a summary line, then one line per problem with what to do."""
    root = root or project_root()
    english = report.markdown
    total = len(report.translated) + len(report.missing)
    where = translation_path(report.english, root).relative_to(root)
    lines = [f"{chinese_path(report.english, root).relative_to(root)}: {len(report.translated)}/{total} markdown "
             f"cells translated" + (f", {report.problems} to fix in {where}" if report.problems else "")]

    def first_words(cell_id: str) -> str:
        return " ".join(english[cell_id].split())[:60]

    for cell_id in report.missing:
        lines.append(f"  missing       cell {cell_id} (en {source_hash(english[cell_id])}): {first_words(cell_id)!r}")
    for cell_id in report.stale:
        lines.append(f"  stale         cell {cell_id}: the English changed since it was translated; revise the text "
                     f"and set en {source_hash(english[cell_id])}: {first_words(cell_id)!r}")
    for cell_id in report.untranslated:
        lines.append(f"  untranslated  cell {cell_id}: still the English text: {first_words(cell_id)!r}")
    for cell_id in report.orphaned:
        lines.append(f"  orphaned      cell {cell_id}: the English notebook has no such cell; delete the entry")
    for message in report.glossary:
        lines.append(f"  glossary      cell {message} (README.md's glossary)")
    return lines
