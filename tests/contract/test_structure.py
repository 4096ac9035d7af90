"""The package's shape (ADR 0060): no import cycle between its modules, no production
module importing the test tools in ``voice_server_moshi.testing``, no module over 450 lines.

Read from the source with ``ast`` (nothing is imported), so it runs in the light install.
Only module-level imports count for cycles (those run when a module is imported; imports
inside functions and under ``if TYPE_CHECKING:`` are deferred), but every import counts
for the ``testing`` rule.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import voice_server_moshi

PACKAGE = "voice_server_moshi"
ROOT = Path(voice_server_moshi.__file__).parent
MAX_LINES = 450
TESTING = f"{PACKAGE}.testing"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: top level, and inside top-level
    ``if``/``try``/``with`` blocks, except ``if TYPE_CHECKING:``."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _module_level(node.body)
            yield from _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody,
                          *(h.body for h in node.handlers)):
                yield from _module_level(block)
        elif isinstance(node, ast.With):
            yield from _module_level(node.body)


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The package modules an import statement loads (a package's ``__init__`` included)."""
    names: set[str] = set()
    if isinstance(node, ast.Import):
        names = {a.name for a in node.names}
    else:
        if node.level:
            is_pkg = MODULES[module].name == "__init__.py"
            base = module.split(".")
            base = base[: len(base) - node.level + (1 if is_pkg else 0)]
            src = ".".join(base + ([node.module] if node.module else []))
        else:
            src = node.module or ""
        names = {src} | {f"{src}.{a.name}" for a in node.names}
    out: set[str] = set()
    for name in names:
        parts = name.split(".")
        # Importing a.b.c runs a, a.b and a.b.c.
        for i in range(1, len(parts) + 1):
            candidate = ".".join(parts[:i])
            if candidate in MODULES:
                out.add(candidate)
    return out


def _imports(module: str, *, module_level_only: bool) -> set[str]:
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    nodes = (_module_level(tree.body) if module_level_only else
             (n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))))
    out: set[str] = set()
    for node in nodes:
        out |= _targets(module, node)
    out.discard(module)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _without_parent_edges(module: str, targets: set[str]) -> set[str]:
    # A submodule always runs its parent packages' __init__ first; that edge is Python's,
    # not a design choice, and would make every package with re-exports look cyclic.
    return {t for t in targets if not module.startswith(t + ".")}


def test_no_import_cycle_between_package_modules() -> None:
    graph = {m: _without_parent_edges(m, _imports(m, module_level_only=True)) for m in MODULES}
    assert _cycles(graph) == []


def test_nothing_outside_testing_imports_testing() -> None:
    offenders = {
        m: sorted(t for t in _imports(m, module_level_only=False)
                  if t == TESTING or t.startswith(TESTING + "."))
        for m in MODULES
        if not (m == TESTING or m.startswith(TESTING + "."))
    }
    assert {m: t for m, t in offenders.items() if t} == {}


def test_engine_does_not_import_the_moshi_adapter_package() -> None:
    # moshi/ (the adapter) imports engine/ (embedded transport); never the other way.
    engine = [m for m in MODULES if m.startswith(f"{PACKAGE}.engine")]
    bad = {m: sorted(t for t in _imports(m, module_level_only=False)
                     if t.startswith(f"{PACKAGE}.moshi")) for m in engine}
    assert {m: t for m, t in bad.items() if t} == {}


def test_modules_are_small() -> None:
    sizes = {m: len(p.read_text().splitlines()) for m, p in MODULES.items()}
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}


# The checks must be able to fail: each one on a small made-up package.


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize(
    ("code", "module_level", "expected"),
    [
        ("from .engine import core", True,
         {PACKAGE, f"{PACKAGE}.engine", f"{PACKAGE}.engine.core"}),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .engine import core",
         True, set()),
        ("def f():\n    from .testing import fixtures", True, set()),
        ("def f():\n    from .testing import fixtures", False,
         {PACKAGE, TESTING, f"{TESTING}.fixtures"}),
        ("import voice_server_moshi.testing.moshi_server as m", True,
         {PACKAGE, TESTING, f"{TESTING}.moshi_server"}),
    ],
)
def test_imports_are_read_as_python_runs_them(
    code: str, module_level: bool, expected: set[str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = f"{PACKAGE}.zz_structure_probe"
    monkeypatch.setitem(MODULES, fake, tmp_path / "zz_structure_probe.py")
    MODULES[fake].write_text(code + "\n")
    assert _imports(fake, module_level_only=module_level) == expected
