"""The package's floors (DESIGN.md, "Architecture"): no import circle, and method modules stay pure.

Every module of ``mtl_tutorial`` is parsed with ``ast``; every ``import`` counts, at module level and
inside functions, classes and ``if`` blocks alike (an import inside a function still runs, later).
Importing ``mtl_tutorial.a.b`` also runs the package ``mtl_tutorial.a``, so that edge is added too,
except where the importer sits inside that package already (its ``__init__`` is then running).
Dynamic imports (``importlib.import_module``) are not seen.
"""

import ast
from pathlib import Path

import mtl_tutorial

PACKAGE = Path(mtl_tutorial.__file__).parent
BASE = {"runtime", "backbone", "evidence", "checks"}
METHODS = {
    "objectives", "models", "sharing", "weighting", "aggregation", "relations", "adversarial", "meta",
    "adapter", "lora", "prefix", "multitask_peft", "merging", "instruction",
}
"""Pure: they take tensors, models, losses and data as arguments and import only BASE and METHODS."""


def module_name(path: Path) -> str:
    parts = ("mtl_tutorial", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def ancestors(name: str) -> list[str]:
    """``mtl_tutorial.a.b.c`` -> [``mtl_tutorial.a.b``, ``mtl_tutorial.a``, ``mtl_tutorial``]."""
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(len(parts) - 1, 0, -1)]


def known_module(name: str) -> str:
    """The longest prefix of a dotted name that is a module of the package (``a.b.func`` -> ``a.b``)."""
    return next(candidate for candidate in [name, *ancestors(name)] if candidate in MODULES)


def imported_modules(name: str) -> list[tuple[str, int, str]]:
    """(module of the package, line, the import statement) for every import in module ``name``."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # from pkg import sub: the submodule when there is one, the package's attribute otherwise
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        statement = ast.unparse(node)
        for target in targets:
            if target == "mtl_tutorial" or target.startswith("mtl_tutorial."):
                found.append((known_module(target), node.lineno, statement))
    return list(dict.fromkeys(found))


def import_graph() -> dict[str, dict[str, tuple[int, str]]]:
    """module -> {imported module: (line, statement)} over the package, parent packages included."""
    graph = {}
    for name in MODULES:
        edges = {}
        for target, line, statement in imported_modules(name):
            running = {name, *ancestors(name)}
            for module in [target, *ancestors(target)]:
                if module not in running and module != name:
                    edges.setdefault(module, (line, statement))
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, tuple[int, str]]]) -> list[str] | None:
    """One import circle [m0, m1, ..., m0] of ``graph``, or None (depth-first search, three colours)."""
    state, stack = {}, []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def describe(graph, cycle: list[str]) -> str:
    return "\n".join(
        f"  {a} -> {b}   ({MODULES[a].relative_to(PACKAGE.parent)}:{graph[a][b][0]}: {graph[a][b][1]})"
        for a, b in zip(cycle, cycle[1:])
    )


def test_the_floors_name_modules_that_exist():
    missing = sorted(m for m in BASE | METHODS if f"mtl_tutorial.{m}" not in MODULES)
    assert not missing, f"DESIGN.md's floors name module(s) the package lacks: {', '.join(missing)}; update BASE/METHODS"


def test_the_package_has_no_import_circle():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, (
        "import circle in mtl_tutorial (a lower floor must not import a higher one; hand the thing in as an "
        "argument instead):\n" + describe(graph, cycle)
    )


def unit(name: str) -> str:
    """The top-level module or package a module belongs to: ``mtl_tutorial.distributed.__main__`` ->
    ``mtl_tutorial.distributed``. A package is one floor with all its submodules."""
    return ".".join(name.split(".")[:2])


def unit_graph() -> dict[str, dict[str, tuple[str, int, str]]]:
    """floor -> {imported floor: (importing module, line, statement)}: ``import_graph`` with every
    submodule's imports charged to its top-level package, the root package left out."""
    graph: dict[str, dict[str, tuple[str, int, str]]] = {}
    for name, edges in import_graph().items():
        if name == "mtl_tutorial":
            continue
        for target, (line, statement) in edges.items():
            if target != "mtl_tutorial" and unit(target) != unit(name):
                graph.setdefault(unit(name), {}).setdefault(unit(target), (name, line, statement))
    return graph


def test_no_circle_between_packages_either():
    graph = unit_graph()
    cycle = find_cycle({a: {b: (0, "") for b in edges} for a, edges in graph.items()})
    assert cycle is None, (
        "import circle between the package's floors (a package counts with all its submodules, e.g. its "
        "__main__):\n" + "\n".join(f"  {a} -> {b}   ({graph[a][b][0]}:{graph[a][b][1]}: {graph[a][b][2]})"
                                    for a, b in zip(cycle, cycle[1:]))
    )


def test_method_modules_import_only_base_and_method_modules():
    allowed = {"mtl_tutorial"} | {f"mtl_tutorial.{m}" for m in BASE | METHODS}
    offences = []
    for method in sorted(METHODS):
        name = f"mtl_tutorial.{method}"
        for target, line, statement in imported_modules(name):
            if target not in allowed:
                offences.append(f"  {MODULES[name].relative_to(PACKAGE.parent)}:{line}: {statement}   ({target})")
    assert not offences, (
        "method modules are pure: they import only the base (" + ", ".join(sorted(BASE)) + ") and other method "
        "modules, never the loop, the data, the benchmarks or the apps; take it as an argument instead:\n"
        + "\n".join(offences)
    )


def test_the_checker_sees_imports_inside_functions_and_packages_run_by_a_submodule():
    graph = import_graph()
    assert "mtl_tutorial.chapters" in graph["mtl_tutorial.grading.runner"]  # imported inside a function only
    assert "mtl_tutorial.data" in graph["mtl_tutorial.schedules"]  # schedules imports mtl_tutorial.data.multitask
    assert "mtl_tutorial.bench" not in graph["mtl_tutorial.bench.serving"]  # its own package is running
    assert find_cycle({"a": {"b": (1, "")}, "b": {"c": (1, "")}, "c": {"a": (1, "")}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": (1, "")}, "b": {}}) is None
