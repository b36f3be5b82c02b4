"""The package's own imports form no cycle, and point one way: integrations to core."""

from __future__ import annotations

import ast
from pathlib import Path

import redis_breaker

PACKAGE = Path(redis_breaker.__file__).parent
CORE_PREFIX = "redis_breaker._"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Modules of ours that ``path`` imports, at module level or inside functions.

    Imports under ``if TYPE_CHECKING:`` run only for the type checker and do
    not count. ``from package import name`` counts as importing the submodule
    ``package.name`` when there is one, else the package itself.
    """
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts}
    modules = set(paths)
    return {name: _imports(path, modules) for name, path in paths.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts, or None."""
    done: set[str] = set()
    stack: list[str] = []
    on_stack: set[str] = set()

    def walk(node: str) -> list[str] | None:
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt in on_stack:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in done:
                found = walk(nxt)
                if found:
                    return found
        stack.pop()
        on_stack.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            found = walk(start)
            if found:
                return found
    return None


def test_the_graph_sees_the_package() -> None:
    """The walk finds the modules and the edges it is meant to judge."""
    graph = _graph()
    assert {"redis_breaker._breaker", "redis_breaker.cache.backend",
            "redis_breaker.celery.outbox", "redis_breaker.channels.layer"} <= set(graph)
    assert "redis_breaker._breaker" in graph["redis_breaker._registry"]
    assert "redis_breaker.cache.journal" in graph["redis_breaker.cache.backend"]


def test_no_import_cycle() -> None:
    """No module of the package imports itself back, however indirectly."""
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_core_imports_only_core() -> None:
    """The private core modules import no integration and no Django glue of ours."""
    graph = _graph()
    for name, targets in graph.items():
        if name.startswith(CORE_PREFIX):
            outside = sorted(t for t in targets if not t.startswith(CORE_PREFIX))
            assert not outside, f"{name} imports {outside}"


def test_a_cycle_is_found() -> None:
    """The cycle finder itself reports a cycle when there is one."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
