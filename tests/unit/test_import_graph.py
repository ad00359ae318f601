"""The package's import graph has no cycle (issue #17): every import counts, function-local ones
too, except those under ``if TYPE_CHECKING:`` (never executed)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.source_tree import is_type_checking_block, package_modules, resolve_from


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``module`` imports at run time (at any depth, TYPE_CHECKING blocks skipped)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if is_type_checking_block(child):
                assert isinstance(child, ast.If)
                for stmt in child.orelse:
                    visit_node(stmt)
                continue
            visit_node(child)

    def visit_node(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = resolve_from(module, path, node)
            for alias in node.names:
                # `from vsync_stream.bridges import faust_seam` imports the submodule
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else base)
        visit(node)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    resolved = set()
    for name in found:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != module:
            resolved.add(name)
    return resolved


def import_graph() -> dict[str, set[str]]:
    """Package module → the package modules it imports."""
    modules = package_modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, …, a]``, or None (iterative depth-first search)."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    for start in sorted(graph):
        if colour[start] != WHITE:
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        colour[start] = GREY
        while stack:
            node, todo = stack[-1]
            if not todo:
                colour[node] = BLACK
                stack.pop()
                continue
            nxt = todo.pop(0)
            if colour.get(nxt) == GREY:
                path = [n for n, _ in stack]
                return path[path.index(nxt):] + [nxt]
            if colour.get(nxt) == WHITE:
                colour[nxt] = GREY
                stack.append((nxt, sorted(graph[nxt])))
    return None


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or []) + (
        "\nmove what both sides need into a module of its own (see vsync_stream/cli_support.py)")


def test_the_graph_is_read_from_the_code() -> None:
    """The check can fail: the graph sees function-local imports and finds a planted cycle."""
    graph = import_graph()
    assert "vsync_stream.app" in graph["vsync_stream.cli"]  # imported inside main()
    assert "vsync_stream.app" not in graph["vsync_stream.web"]  # only under TYPE_CHECKING
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
