"""batchctl's modules import each other one way only (no cycle, imports inside functions and
under TYPE_CHECKING counted), the table is a leaf, and no module or function outgrows
what a reader takes in at once (~400 and ~50 lines)."""

from __future__ import annotations

import ast
from pathlib import Path

from batchctl.table import TABLE
from tests.harness import REPO

PACKAGE = REPO / "batchctl"


def module_name(path: Path) -> str:
    return "batchctl." + path.stem


def imported(path: Path) -> set[str]:
    """The batchctl modules ``path`` imports anywhere in it (functions, TYPE_CHECKING too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("batchctl."))
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module == "batchctl":
                found.update(f"batchctl.{a.name}" for a in node.names)
            elif node.module.startswith("batchctl."):
                found.add(node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    """Every module's imports; ``cli`` also loads each handler's module (by its name)."""
    graph = {module_name(p): imported(p) for p in PACKAGE.glob("*.py")}
    graph["batchctl.cli"] |= {"batchctl." + c.handler.rpartition(".")[0] for c in TABLE}
    return graph


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph as a path that ends where it starts, else None (depth first)."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt, [*path, nxt])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_no_import_cycle_in_batchctl() -> None:
    """No module of batchctl reaches back, however indirectly, to one that imports it."""
    graph = import_graph()
    assert set(graph) >= {"batchctl.cli", "batchctl.table", "batchctl.submit"}
    assert cycle_in(graph) is None, " -> ".join(cycle_in(graph) or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    """The checker itself bites: a table that imported the parser back would be a cycle."""
    graph = import_graph()
    graph["batchctl.table"] = {"batchctl.cli"}
    found = cycle_in(graph)
    assert found is not None and found[0] == found[-1] == "batchctl.cli"
    assert "batchctl.table" in found


def test_the_table_is_a_leaf_and_only_submit_imports_consent() -> None:
    """table, errors and options import no command; consent is imported by submit alone."""
    graph = import_graph()
    assert graph["batchctl.table"] == set() and graph["batchctl.errors"] == set()
    assert graph["batchctl.options"] <= {"batchctl.errors", "batchctl.render"}
    assert {m for m, deps in graph.items() if "batchctl.consent" in deps} == {
        "batchctl.cli",  # by the handler's name: `batchctl consent`
        "batchctl.submit",
    }
    assert "batchctl.submit" not in graph["batchctl.consent"]


def test_modules_and_functions_stay_readable() -> None:
    """No batchctl module over 400 lines, no function over 50."""
    for path in PACKAGE.glob("*.py"):
        lines = path.read_text().splitlines()
        assert len(lines) <= 400, f"{path.name}: {len(lines)} lines"
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                assert size <= 50, f"{path.name}:{node.lineno} {node.name}: {size} lines"
