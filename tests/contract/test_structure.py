"""The package's shape (ADR 0060, ADR 0115): no import cycle between its modules, no
production module importing the test tools in ``voice_server_moshi.testing``, the engine
importing neither the Moshi adapter nor the demo, no module over 450 lines.

Read from the source with ``ast`` (nothing is imported), so it runs in the light install.
Every import counts, at the top of a module, inside a function or under
``if TYPE_CHECKING:``: a circle that only a deferred import closes is still two modules
that cannot be understood, tested or moved apart (ADR 0115).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import voice_server_moshi

PACKAGE = "voice_server_moshi"
MAX_LINES = 450
TESTING = f"{PACKAGE}.testing"

Modules = dict[str, Path]


def discover(root: Path) -> Modules:
    """Every module of the package at ``root``, by dotted name (a package by its own)."""
    out: Modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = discover(Path(voice_server_moshi.__file__).parent)


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _targets(modules: Modules, module: str, node: ast.Import | ast.ImportFrom
             ) -> tuple[set[str], set[str]]:
    """(named, implied): the package modules an import statement names, and the packages
    Python runs on the way to them (importing a.b.c runs a and a.b first)."""
    named: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            parts = alias.name.split(".")
            # The deepest module the dotted name reaches (a.b.c may name a.b's attribute c).
            found = [".".join(parts[:i]) for i in range(len(parts), 0, -1)
                     if ".".join(parts[:i]) in modules]
            named |= set(found[:1])
    else:
        if node.level:
            is_pkg = modules[module].name == "__init__.py"
            base = module.split(".")
            base = base[: len(base) - node.level + (1 if is_pkg else 0)]
            src = ".".join(base + ([node.module] if node.module else []))
        else:
            src = node.module or ""
        for alias in node.names:
            sub = f"{src}.{alias.name}"
            # ``from p import m`` names the submodule m; ``from p import X`` names p itself,
            # whose __init__ must have defined X by then (re-exports close circles too).
            named.add(sub if sub in modules else src)
    named &= modules.keys()
    implied = {p for n in named for p in _parents(n) if p in modules} - named
    return named, implied


def imports(modules: Modules, module: str) -> set[str]:
    """Every package module that ``module``'s imports run, wherever the import sits."""
    named, implied = _edges(modules, module)
    return named | implied


def _edges(modules: Modules, module: str) -> tuple[set[str], set[str]]:
    tree = ast.parse(modules[module].read_text(), str(modules[module]))
    named: set[str] = set()
    implied: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            n, i = _targets(modules, module, node)
            named |= n
            implied |= i
    named.discard(module)
    implied.discard(module)
    return named, implied


def import_graph(modules: Modules) -> dict[str, set[str]]:
    """Who imports whom. A submodule always runs its own parent packages' __init__ first;
    that implied edge is Python's, not a design choice, and would make every package with
    re-exports look cyclic, so it is left out, unless the module names its parent itself
    (``from .. import X``: a name the parent's __init__ must have defined already)."""
    graph: dict[str, set[str]] = {}
    for m in modules:
        named, implied = _edges(modules, m)
        own = set(_parents(m))
        graph[m] = named | (implied - own)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
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


def _importers_of(prefixes: tuple[str, ...], within: str) -> dict[str, list[str]]:
    """Modules under ``within`` that import a module under one of ``prefixes``."""
    def under(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    bad = {m: sorted(t for t in imports(MODULES, m) if any(under(t, p) for p in prefixes))
           for m in MODULES if under(m, within)}
    return {m: t for m, t in bad.items() if t}


def test_no_import_cycle_between_package_modules() -> None:
    assert cycles(import_graph(MODULES)) == []


def test_nothing_outside_testing_imports_testing() -> None:
    offenders = {
        m: sorted(t for t in imports(MODULES, m) if t == TESTING or t.startswith(TESTING + "."))
        for m in MODULES
        if not (m == TESTING or m.startswith(TESTING + "."))
    }
    assert {m: t for m, t in offenders.items() if t} == {}


def test_engine_does_not_import_the_moshi_adapter_package() -> None:
    # moshi/ (the adapter) imports engine/ (embedded transport); never the other way.
    assert _importers_of((f"{PACKAGE}.moshi",), f"{PACKAGE}.engine") == {}


def test_engine_does_not_import_the_demo() -> None:
    # call/ (the demo command) and corpus/ (the test corpus) sit above the engine; the dev
    # STT reads WAVs with audio/wavio and finds the bundled clips through bundled.py.
    demo = (f"{PACKAGE}.call", f"{PACKAGE}.corpus")
    assert _importers_of(demo, f"{PACKAGE}.engine") == {}


def test_modules_are_small() -> None:
    sizes = {m: len(p.read_text().splitlines()) for m, p in MODULES.items()}
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}


# The checks must be able to fail: each one on a small made-up package.


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def _package(tmp_path: Path, files: dict[str, str]) -> Modules:
    root = tmp_path / "pkg"
    for rel, code in {"__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(code)
    return discover(root)


_TC = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    "


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        # The three shapes issue 19 found: a TYPE_CHECKING import one way and a runtime one
        # back, an import inside a function, and both deferred.
        ({"a.py": "from .b import B\n", "b.py": _TC + "from .a import A\n"}, [["pkg.a", "pkg.b"]]),
        ({"a.py": "def f():\n    from .b import g\n", "b.py": "from . import a\n"},
         [["pkg.a", "pkg.b"]]),
        ({"x/a.py": _TC + "from ..y.b import B\n", "y/b.py": "def f():\n    import pkg.x.a\n"},
         [["pkg.x.a", "pkg.y.b"]]),
        # A package whose __init__ re-exports a module that takes a name back from it.
        ({"__init__.py": "from .a import A\n", "a.py": "def f():\n    from . import VERSION\n"},
         [["pkg", "pkg.a"]]),
        # Importing c.d runs c's __init__, which imports a: a circle through the package.
        ({"a.py": "from .c.d import D\n", "c/__init__.py": "def f():\n    from ..a import A\n",
          "c/d.py": ""}, [["pkg.a", "pkg.c"]]),
        # Not circles: a submodule running its own package, and a one-way chain.
        ({"__init__.py": "from .a import A\n", "a.py": "from . import b\n", "b.py": ""}, []),
        ({"a.py": "def f():\n    from .b import g\n", "b.py": _TC + "import os\n"}, []),
    ],
)
def test_deferred_imports_close_circles_too(
    files: dict[str, str], expected: list[list[str]], tmp_path: Path
) -> None:
    assert cycles(import_graph(_package(tmp_path, files))) == expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("from .engine import core", {PACKAGE, f"{PACKAGE}.engine", f"{PACKAGE}.engine.core"}),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .engine import core",
         {PACKAGE, f"{PACKAGE}.engine", f"{PACKAGE}.engine.core"}),
        ("def f():\n    from .testing import fixtures", {PACKAGE, TESTING, f"{TESTING}.fixtures"}),
        ("import voice_server_moshi.testing.moshi_server as m",
         {PACKAGE, TESTING, f"{TESTING}.moshi_server"}),
        ("from . import Steering", {PACKAGE}),
    ],
)
def test_imports_are_read_as_python_runs_them(code: str, expected: set[str],
                                              tmp_path: Path) -> None:
    probe = f"{PACKAGE}.zz_structure_probe"
    modules = {**MODULES, probe: tmp_path / "zz_structure_probe.py"}
    modules[probe].write_text(code + "\n")
    assert imports(modules, probe) == expected
