"""The layer rules of DESIGN.md ("The next shape", issue 14), checked on the source.

Every module under ``lsio_ray/`` is parsed with :mod:`ast`; every import is looked at,
at module level, inside functions and under ``if TYPE_CHECKING:`` alike (``from x import
y`` where ``y`` is a submodule counts as importing ``x.y``; ``importlib.import_module``
of a literal name counts too).  The rules:

a. only ``lsio_ray/io/`` imports the C binding ``lsio_ray._lsio``; outside ``io/``
   nobody imports ``lsio_ray.io._core`` (the layers above use ``lsio_ray.io``'s public
   names);
b. ``lsio_ray/zarr/`` imports nothing of the Ray layer (``lsio_ray.ray``, ``lsio_ray.data``);
c. ``lsio_ray/ray/`` reaches Zarr only through its public interface, ``lsio_ray.zarr``
   and the documented :mod:`lsio_ray.zarr.codec_api`;
d. CLI helpers (``cli.py``, ``*_cli.py``, ``argtypes.py``, ``__main__.py``) never import
   a benchmark module (the ``lsio-ray bench`` commands of ``lsio_ray/cli.py`` aside:
   running the benchmark is what they are for);
e. no Python file under ``lsio_ray/`` is over 600 lines;
f. ``lsio_ray/data.py`` uses Zarr through ``lsio_ray.zarr`` (``Array``'s public
   methods) only: no ``zarr.loader``/``read``/``stream``/... and no ``io.task``;
g. outside ``io/`` nobody takes raw addresses (``x.ctypes``, ``__array_interface__``):
   ``lsio_ray.io.address(x)`` does;
h. no import circle inside ``lsio_ray/zarr/`` (nor anywhere in the package; function-level
   imports count, ``TYPE_CHECKING`` ones do not), and in ``lsio_ray/zarr/`` and
   ``lsio_ray/ray/rechunk/`` no function-level import but of an optional heavy
   dependency (:data:`OPTIONAL_HEAVY`) with a comment saying so (function-level imports
   of our own modules are how the circle hid).

Benchmark modules (``lsio_ray/bench.py``, anything named ``bench*``) are exempt from a,
g and h.  Exceptions are listed in :data:`ALLOWED`, each with its reason; an exception
no longer needed fails :func:`test_allow_list_is_not_stale`, so the list only shrinks.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "lsio_ray"
MAX_LINES = 600

#: public Zarr modules the Ray layer may import (besides the package ``lsio_ray.zarr``)
ZARR_PUBLIC = {"lsio_ray.zarr", "lsio_ray.zarr.codec_api"}

#: third-party modules a function in zarr/ or ray/rechunk/ may import on first use
#: (optional extras, or slow to import), with a comment saying so
OPTIONAL_HEAVY = {"ray", "zarr", "numcodecs", "tensorstore", "tqdm", "matplotlib"}

#: (rule, file) -> why the file may break the rule for now
ALLOWED: dict[tuple[str, str], str] = {}

RULE_TEXT = {
    "a": "only lsio_ray/io/ imports the C binding, and only io/ imports lsio_ray.io._core: "
    "import the name from lsio_ray.io (add it to the re-exports of lsio_ray/io/__init__.py)",
    "b": "lsio_ray/zarr/ never imports the Ray layer: move what both need down into "
    "lsio_ray/zarr/ or lsio_ray/io/",
    "c": "lsio_ray/ray/ reaches Zarr through its public interface: import from "
    "lsio_ray.zarr (add the name to its __all__) or lsio_ray.zarr.codec_api",
    "d": "CLI helpers never import benchmarks: move what they need out of the benchmark "
    "(into lsio_ray/argtypes.py or lsio_ray/io/config.py)",
    "e": f"no file over {MAX_LINES} lines: split it by concern",
    "f": "lsio_ray/data.py uses public Array methods only: give lsio_ray.zarr.Array (or "
    "lsio_ray.zarr's __all__) what it needs instead of importing Zarr internals",
    "g": "raw addresses are taken only in lsio_ray/io/: use lsio_ray.io.address(arr)",
    "h": "no import circle in lsio_ray/zarr/: move the code to the module it belongs to "
    "and import at module level (function-level imports only for optional heavy "
    "dependencies: ray, zarr-python, tensorstore)",
}


@dataclass(frozen=True)
class Imp:
    """One module imported by one statement."""

    target: str
    line: int
    function: str | None  # the enclosing function, None at module level
    type_only: bool  # under ``if TYPE_CHECKING:``


@dataclass(frozen=True)
class Violation:
    rule: str
    file: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: rule ({self.rule}) {self.what} -- {RULE_TEXT[self.rule]}"


# -- parsing -------------------------------------------------------------------------------


def module_name(rel: str) -> str:
    """``lsio_ray/zarr/read.py`` -> ``lsio_ray.zarr.read``; packages by their name."""
    parts = rel.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_modules() -> dict[str, str]:
    """Every module under lsio_ray/: relative path -> source."""
    return {
        p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8")
        for p in sorted(PKG.rglob("*.py"))
        if "__pycache__" not in p.parts
    }


@functools.cache
def parse(source: str, filename: str = "<unknown>") -> ast.Module:
    """``ast.parse``, once per source.  The package's files are parsed when this module
    is collected, before any test has started a thread: CPython 3.11's ``ast`` keeps its
    recursion counter per interpreter, so a parse that runs while another thread builds
    an AST (zarr's and Ray's threads left by earlier tests do) can fail with "SystemError:
    AST constructor recursion depth mismatch" (python/cpython#106905, seen here once in
    a long run)."""
    return ast.parse(source, filename=filename)


for _rel, _src in package_modules().items():  # now, at collection (see parse)
    parse(_src, _rel)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(rel: str, tree: ast.AST, modules: set[str]) -> list[Imp]:
    """The modules ``rel`` imports (``modules``: every module name of the package, to
    tell ``from pkg import submodule`` from ``from pkg import name``)."""
    me = module_name(rel)
    package = me if rel.endswith("__init__.py") else me.rpartition(".")[0]
    out: list[Imp] = []

    def resolve(node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = package.split(".")
        base = base[: len(base) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))

    def walk(node: ast.AST, function: str | None, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            fn, to = function, type_only
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                fn = getattr(child, "name", "<lambda>")
            if isinstance(child, ast.Import):
                for alias in child.names:
                    out.append(Imp(alias.name, child.lineno, fn, to))
            elif isinstance(child, ast.ImportFrom):
                base = resolve(child)
                plain = False  # names that are not submodules: the module itself is used
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    if sub in modules:
                        out.append(Imp(sub, child.lineno, fn, to))
                    else:
                        plain = True
                if plain:
                    out.append(Imp(base, child.lineno, fn, to))
            elif (
                isinstance(child, ast.Call)
                and (
                    (isinstance(child.func, ast.Attribute) and child.func.attr == "import_module")
                    or (isinstance(child.func, ast.Name) and child.func.id == "__import__")
                )
                and child.args
                and isinstance(child.args[0], ast.Constant)
                and isinstance(child.args[0].value, str)
            ):
                out.append(Imp(child.args[0].value, child.lineno, fn, to))
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    walk_one(stmt, fn, True)
                for stmt in child.orelse:
                    walk_one(stmt, fn, to)
            else:
                walk(child, fn, to)

    def walk_one(stmt: ast.AST, function: str | None, type_only: bool) -> None:
        holder = ast.Module(body=[stmt], type_ignores=[])  # visit the statement itself
        walk(holder, function, type_only)

    walk(tree, None, False)
    return out


# -- the rules -----------------------------------------------------------------------------


def _under(target: str, module: str) -> bool:
    return target == module or target.startswith(module + ".")


def is_bench(rel: str) -> bool:
    """A benchmark module: ``lsio_ray/bench.py``, or any file or package named bench*."""
    parts = rel.removesuffix(".py").split("/")
    return any(p.startswith("bench") for p in parts[1:])


def is_cli_helper(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return name in ("cli.py", "argtypes.py", "__main__.py") or name.endswith("_cli.py")


def _is_bench_module(target: str) -> bool:
    return _under(target, "lsio_ray") and any(p.startswith("bench") for p in target.split(".")[1:])


def check_source(rel: str, source: str, modules: set[str]) -> list[Violation]:
    """Every rule but the package-wide circle check, for one file ``rel`` (a path
    relative to the repository, ``lsio_ray/...``) holding ``source``."""
    tree = parse(source, rel)
    src_lines = source.splitlines()
    imps = imports_of(rel, tree, modules)
    bench = is_bench(rel)
    in_io = rel.startswith("lsio_ray/io/")
    found: list[Violation] = []

    def bad(rule: str, line: int, what: str) -> None:
        found.append(Violation(rule, rel, line, what))

    for imp in imps:
        t = imp.target
        # (a) the C binding and io._core stay inside io/
        if (
            not in_io
            and not bench
            and (_under(t, "lsio_ray._lsio") or _under(t, "lsio_ray.io._core"))
        ):
            bad("a", imp.line, f"imports {t}")
        # (b) zarr/ is below the Ray layer
        if rel.startswith("lsio_ray/zarr/") and (
            _under(t, "lsio_ray.ray") or _under(t, "lsio_ray.data")
        ):
            bad("b", imp.line, f"imports {t}")
        # (c) ray/ uses Zarr's public interface
        if rel.startswith("lsio_ray/ray/") and _under(t, "lsio_ray.zarr") and t not in ZARR_PUBLIC:
            bad("c", imp.line, f"imports {t}")
        # (d) CLI helpers never import benchmarks (the bench commands themselves aside)
        if is_cli_helper(rel) and _is_bench_module(t):
            command = rel == "lsio_ray/cli.py" and (imp.function or "").startswith("cmd_bench_")
            if not command:
                bad("d", imp.line, f"imports {t}")
        # (f) data.py: public Zarr only, no IO-task internals
        if rel == "lsio_ray/data.py" and (
            (_under(t, "lsio_ray.zarr") and t != "lsio_ray.zarr")
            or _under(t, "lsio_ray.io.task")
            or _under(t, "lsio_ray.io._core")
        ):
            bad("f", imp.line, f"imports {t}")
        # (h) no function-level imports where the circle hid: only of optional heavy
        # dependencies, with a comment saying so (on the line or the one above)
        if imp.function is not None and (
            rel.startswith("lsio_ray/zarr/") or rel.startswith("lsio_ray/ray/rechunk/")
        ):
            if _under(t, "lsio_ray"):
                bad("h", imp.line, f"imports {t} inside {imp.function}()")
            elif t.split(".")[0] not in OPTIONAL_HEAVY:
                bad("h", imp.line, f"imports {t} inside {imp.function}() (not optional)")
            elif not any("#" in text for text in src_lines[max(0, imp.line - 2) : imp.line]):
                bad("h", imp.line, f"imports {t} inside {imp.function}() with no comment why")
    # (e) size
    lines = source.count("\n") + (0 if source.endswith("\n") or not source else 1)
    if lines > MAX_LINES:
        bad("e", 1, f"has {lines} lines")
    # (g) raw addresses
    if not in_io and not bench:
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("ctypes", "__array_interface__"):
                bad("g", node.lineno, f"takes an address with .{node.attr}")
    return found


def import_graph(sources: dict[str, str], modules: set[str]) -> dict[str, dict[str, int]]:
    """module -> {module it imports when run (no TYPE_CHECKING imports): line}, inside
    the package."""
    graph: dict[str, dict[str, int]] = {}
    for rel, src in sources.items():
        me = module_name(rel)
        edges = graph.setdefault(me, {})
        for imp in imports_of(rel, parse(src, rel), modules):
            if imp.type_only or imp.target not in modules or imp.target == me:
                continue
            edges.setdefault(imp.target, imp.line)
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def cycle_violations(sources: dict[str, str], modules: set[str]) -> list[Violation]:
    graph = import_graph(sources, modules)
    rel_of = {module_name(rel): rel for rel in sources}
    found = []
    for comp in cycles(graph):
        members = set(comp)
        for m in comp:
            for w, line in graph[m].items():
                if w in members:
                    what = f"{m} -> {w} is part of the import circle {' / '.join(comp)}"
                    found.append(Violation("h", rel_of[m], line, what))
    return found


def all_violations() -> list[Violation]:
    sources = package_modules()
    modules = {module_name(rel) for rel in sources}
    found: list[Violation] = []
    for rel, src in sources.items():
        found += check_source(rel, src, modules)
    found += [v for v in cycle_violations(sources, modules) if not is_bench(v.file)]
    return found


# -- the tests -----------------------------------------------------------------------------


def test_layer_rules() -> None:
    found = [v for v in all_violations() if (v.rule, v.file) not in ALLOWED]
    assert not found, "layer rules broken (DESIGN.md, issue 14):\n" + "\n".join(map(str, found))


def test_allow_list_is_not_stale() -> None:
    """Each exception is still needed: remove an entry of ALLOWED once its file obeys."""
    used = {(v.rule, v.file) for v in all_violations()}
    stale = [
        f"{rule} {file} ({why})"
        for (rule, file), why in ALLOWED.items()
        if (rule, file) not in used
    ]
    assert not stale, "remove from ALLOWED in tests/test_layers.py: " + ", ".join(stale)


def test_the_walk_sees_every_module() -> None:
    """The checks run over the whole package (not vacuously over nothing)."""
    sources = package_modules()
    for rel in (
        "lsio_ray/io/_core.py",
        "lsio_ray/zarr/read.py",
        "lsio_ray/ray/actor.py",
        "lsio_ray/data.py",
    ):
        assert rel in sources
    modules = {module_name(rel) for rel in sources}
    core_users = {
        rel
        for rel, src in sources.items()
        for imp in imports_of(rel, parse(src, rel), modules)
        if imp.target == "lsio_ray._lsio"
    }
    assert core_users == {"lsio_ray/io/_core.py"}


MODULES = {
    "lsio_ray",
    "lsio_ray.bench",
    "lsio_ray.data",
    "lsio_ray.io",
    "lsio_ray.io._core",
    "lsio_ray.io.task",
    "lsio_ray.ray",
    "lsio_ray.ray.actor",
    "lsio_ray.zarr",
    "lsio_ray.zarr.blocks",
    "lsio_ray.zarr.codec_api",
    "lsio_ray.zarr.loader",
    "lsio_ray.zarr.read",
    "lsio_ray.zarr.stream",
}


def _rules(rel: str, source: str) -> list[tuple[str, int]]:
    return [(v.rule, v.line) for v in check_source(rel, textwrap.dedent(source), MODULES)]


@pytest.mark.parametrize(
    ("rel", "source", "expected"),
    [
        # (a): the binding, io._core, at module level, in a function, as a submodule
        ("lsio_ray/zarr/x.py", "from lsio_ray._lsio import ffi\n", [("a", 1)]),
        ("lsio_ray/ray/x.py", "def f():\n    from lsio_ray.io import _core\n", [("a", 2)]),
        ("lsio_ray/x.py", "import lsio_ray.io._core as c\n", [("a", 1)]),
        ("lsio_ray/zarr/x.py", "from ..io._core import extent\n", [("a", 1)]),
        ("lsio_ray/io/x.py", "from lsio_ray.io._core import extent\n", []),
        ("lsio_ray/bench.py", "from lsio_ray.io._core import RawEngine\n", []),
        ("lsio_ray/zarr/x.py", "from lsio_ray.io import extent\n", []),
        # (b)
        ("lsio_ray/zarr/x.py", "from lsio_ray.ray import actor\n", [("b", 1)]),
        (
            "lsio_ray/zarr/x.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import lsio_ray.data\n",
            [("b", 3)],
        ),
        # (c)
        ("lsio_ray/ray/x.py", "from lsio_ray.zarr.blocks import CBlock\n", [("c", 1)]),
        ("lsio_ray/ray/x.py", "from lsio_ray.zarr import blocks\n", [("c", 1)]),
        ("lsio_ray/ray/x.py", "from lsio_ray.zarr import Array, codec_api\n", []),
        # (d)
        ("lsio_ray/argtypes.py", "def f():\n    from lsio_ray.bench import x\n", [("d", 2)]),
        (
            "lsio_ray/zarr/cli.py",
            "import importlib\nimportlib.import_module('lsio_ray.bench')\n",
            [("d", 2)],
        ),
        (
            "lsio_ray/cli.py",
            "def cmd_bench_read(a):\n    from lsio_ray.bench import run_read\n",
            [],
        ),
        ("lsio_ray/cli.py", "from lsio_ray.bench import run_read\n", [("d", 1)]),
        # (e)
        ("lsio_ray/x.py", "x = 1\n" * (MAX_LINES + 1), [("e", 1)]),
        ("lsio_ray/x.py", "x = 1\n" * MAX_LINES, []),
        # (f)
        ("lsio_ray/data.py", "from lsio_ray.zarr.stream import random_box_starts\n", [("f", 1)]),
        (
            "lsio_ray/data.py",
            "def f():\n    from lsio_ray.zarr.loader import abandon\n",
            [("f", 2)],
        ),
        ("lsio_ray/data.py", "from lsio_ray.io.task import abandon\n", [("f", 1)]),
        ("lsio_ray/data.py", "import lsio_ray.zarr as lz\nfrom lsio_ray.zarr import Array\n", []),
        # (g)
        ("lsio_ray/zarr/x.py", "def f(a):\n    return a.ctypes.data\n", [("g", 2)]),
        ("lsio_ray/ray/x.py", "p = a.__array_interface__['data'][0]\n", [("g", 1)]),
        ("lsio_ray/io/x.py", "p = a.ctypes.data\n", []),
        ("lsio_ray/ray/x.py", "import ctypes\nctypes.memmove(1, 2, 3)\n", []),
        # (h): function-level imports of our own modules in zarr/ and ray/rechunk/
        ("lsio_ray/zarr/x.py", "def f():\n    from lsio_ray.zarr.read import R\n", [("h", 2)]),
        ("lsio_ray/ray/rechunk/x.py", "def f():\n    import lsio_ray.zarr\n", [("h", 2)]),
        ("lsio_ray/zarr/x.py", "def f():\n    import zarr  # optional, heavy\n", []),
        ("lsio_ray/zarr/x.py", "def f():\n    import zarr\n", [("h", 2)]),
        ("lsio_ray/ray/rechunk/x.py", "def f():\n    import json  # why not\n", [("h", 2)]),
    ],
)
def test_rules_catch_violations(rel: str, source: str, expected: list[tuple[str, int]]) -> None:
    """Each rule fires on a synthetic violation (and only there), so the package-wide
    test cannot pass by checking nothing."""
    assert _rules(rel, source) == expected


def test_circle_is_caught() -> None:
    sources = {
        "lsio_ray/zarr/__init__.py": "from lsio_ray.zarr.a import A\n",
        "lsio_ray/zarr/a.py": "from lsio_ray.zarr import b\nclass A: ...\n",
        "lsio_ray/zarr/b.py": "from lsio_ray.zarr.a import A\n",
        "lsio_ray/zarr/c.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from lsio_ray.zarr.a import A\n"
        ),
        "lsio_ray/zarr/d.py": "from lsio_ray.zarr import c\n",
    }
    modules = {module_name(rel) for rel in sources}
    found = sorted((v.file, v.line) for v in cycle_violations(sources, modules))
    # a <-> b is a circle; c's import of a is for type checking only; the package's
    # __init__ importing its submodules is no circle
    assert found == [("lsio_ray/zarr/a.py", 1), ("lsio_ray/zarr/b.py", 1)]
    # a submodule the package imports, importing a *name* of its package: a circle
    sources["lsio_ray/zarr/__init__.py"] = "from lsio_ray.zarr.d import D\nA = 1\n"
    sources["lsio_ray/zarr/d.py"] = "from lsio_ray.zarr import A\nD = A\n"
    found = sorted((v.file, v.line) for v in cycle_violations(sources, modules))
    assert ("lsio_ray/zarr/__init__.py", 1) in found and ("lsio_ray/zarr/d.py", 1) in found


def test_importing_io_starts_no_thread() -> None:
    """``lsio_ray.io`` stays light: importing it (and the Zarr layer) starts no thread."""
    code = (
        "import threading, lsio_ray.io, lsio_ray.zarr\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)
