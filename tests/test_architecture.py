"""The shape of the code: no import cycle in batchd/ or batchctl/ (imports inside functions
and under TYPE_CHECKING count), so a lower module never reaches back up; no module over
``MAX_MODULE_LINES`` lines and no function over ``MAX_FUNCTION_LINES``."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("batchd", "batchctl")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 50


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every module of ours that ``path`` imports, wherever the import statement is."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle() -> None:
    """No module of batchd/ or batchctl/ imports (directly or through others) one that
    imports it back; a package's __init__ counts as a module of its own."""
    mods = modules()
    known = set(mods)
    graph = {name: imports_of(path, known) - {name} for name, path in mods.items()}
    # A package imports nothing by containing a module: only real import statements count.
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check itself bites: a two-module and a three-module circle are both found."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert sorted(cycles(graph)) == [["a", "b"], ["c", "d", "e"]]


def shown(path: Path) -> str:
    """``path`` as a message names it: from the repository's root when it is inside."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def long_modules(paths: Iterable[Path], limit: int) -> list[str]:
    """``path: N lines`` for each module longer than ``limit`` lines."""
    found = []
    for path in paths:
        n = len(path.read_text().splitlines())
        if n > limit:
            found.append(f"{shown(path)}: {n} lines")
    return found


def long_functions(path: Path, limit: int) -> list[str]:
    """``path:line name: N lines`` for each function or method (nested ones too) longer
    than ``limit`` lines, from its ``def`` to its last line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            n = (node.end_lineno or node.lineno) - node.lineno + 1
            if n > limit:
                found.append(f"{shown(path)}:{node.lineno} {node.name}: {n} lines")
    return found


def test_no_module_is_over_400_lines() -> None:
    """No module of batchd/ or batchctl/ is over 400 lines (split it by what each part is for)."""
    assert long_modules(modules().values(), MAX_MODULE_LINES) == []


def test_no_function_is_over_50_lines() -> None:
    """No function or method of batchd/ or batchctl/ is over 50 lines."""
    limit = MAX_FUNCTION_LINES
    assert [line for path in modules().values() for line in long_functions(path, limit)] == []


def test_the_length_checks_bite(tmp_path: Path) -> None:
    """The length checks name what is too long: a module with its length; a function, a
    method and a nested async function with file, line and length; short ones pass."""
    body = "".join(f"    x{i} = {i}\n" for i in range(50))
    nested = body.replace("    ", "        ")
    source = (
        "def short():\n    return 1\n\n\n"
        f"def long():\n{body}\n\n"
        f"class C:\n    def method(self):\n{nested}\n"
        "    def outer(self):\n        async def inner():\n"
        + nested.replace("        ", "            ")
    )
    path = tmp_path / "sample.py"
    path.write_text(source)
    lines = len(source.splitlines())
    assert long_modules([path], lines) == []
    assert long_modules([path], lines - 1) == [f"{path}: {lines} lines"]
    assert long_functions(path, 50) == [
        f"{path}:5 long: 51 lines",
        f"{path}:59 method: 51 lines",
        f"{path}:111 outer: 52 lines",
        f"{path}:112 inner: 51 lines",
    ]
    assert long_functions(path, 52) == []
