"""The layering docs/ARCHITECTURE.md describes, checked on the source: no import cycles, a leaf module of
per-flow state, pure wire parsers and providers, and modules and functions small enough to read."""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "addons"
MAX_MODULE_LINES = 420  # "no module over ~400 lines"
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _load_time_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: top level, inside top-level if/try, not under
    TYPE_CHECKING and not inside functions (a lazy import there is how a cycle is avoided, not made)."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            found += _load_time_imports(node.body) + _load_time_imports(node.orelse)
        elif isinstance(node, ast.Try):
            found += _load_time_imports(node.body)
            for handler in node.handlers:
                found += _load_time_imports(handler.body)
    return found


def _resolve(name: str) -> str | None:
    """The aigw module an import of `name` loads (a package's __init__ counts as the package)."""
    while name and name not in modules():
        name = name.rpartition(".")[0]
    return name or None


@cache
def imports_of(module: str) -> frozenset[str]:
    tree = ast.parse(modules()[module].read_text())
    targets: set[str] = set()
    for node in _load_time_imports(tree.body):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name == "addons" or name.startswith("addons."):
                resolved = _resolve(name)
                if resolved is not None and resolved != module:
                    targets.add(resolved)
    return frozenset(targets)


def find_cycle(nodes: Iterable[str], edges: Callable[[str], Iterable[str]]) -> list[str] | None:
    """One import cycle (its modules in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(edges(module)):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(nodes):
        if module not in state and (cycle := visit(module)) is not None:
            return cycle
    return None


def test_no_import_cycles() -> None:
    cycle = find_cycle(modules(), imports_of)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph, graph.__getitem__) == ["a", "b", "c", "a"]
    del graph["c"]
    assert find_cycle(graph, lambda m: graph.get(m, set())) is None


def test_flow_state_is_a_leaf() -> None:
    """Every layer reads per-flow state, so it can import none of them."""
    assert imports_of("addons.flow.state") == frozenset()


@pytest.mark.parametrize("module", sorted(m for m in modules() if m.startswith("addons.wire.")))
def test_wire_parsers_are_pure(module: str) -> None:
    """Bytes in, events out: no mitmproxy, and of aigw only other wire modules."""
    source = modules()[module].read_text()
    assert "mitmproxy" not in {n.split(".")[0] for n in _all_imported_names(source)}
    assert all(t.startswith("addons.wire") for t in imports_of(module)), imports_of(module)


@pytest.mark.parametrize("module", sorted(m for m in modules() if m.startswith("addons.providers.")))
def test_providers_are_values(module: str) -> None:
    """A provider describes its API; it never reaches the store, the chain, the sinks or the network."""
    forbidden = ("addons.store", "addons.chain", "addons.sinks", "addons.app", "addons.upstreams")
    assert not [t for t in imports_of(module) if t.startswith(forbidden)]
    source = modules()[module].read_text()
    assert not {"boto3", "botocore", "httpx", "socket", "threading"} & {
        n.split(".")[0] for n in _all_imported_names(source)}


def _all_imported_names(source: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_modules_are_small() -> None:
    big = {m: n for m, p in modules().items() if (n := p.read_text().count("\n")) > MAX_MODULE_LINES}
    assert big == {}


def test_functions_are_small() -> None:
    long: dict[str, int] = {}
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long[f"{module}.{node.name}"] = length
    assert long == {}
