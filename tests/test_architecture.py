"""Architecture rules (issue 11), checked on the source with ``ast``; nothing here imports it.

* No import cycles inside ``autoprune/``. The graph's nodes are the modules (a package is its
  ``__init__.py``); its edges are module -> imported module, for every ``import`` and
  ``from ... import`` statement, function-local ones included (they hide cycles, they do not
  remove them), and every ``importlib.import_module("...")`` / ``__import__("...")`` with a
  literal name. Not edges: imports under ``if TYPE_CHECKING:`` (never run), imports inside a
  package ``__init__``'s module-level ``__getattr__`` (the lazy map of PEP 562), and the
  implicit import of a parent package (``import autoprune.a.b`` runs ``autoprune/a/__init__.py``
  first; a package ``__init__`` that imports its own submodules would otherwise always close a
  cycle). ``from autoprune.a import b`` is an edge to ``autoprune.a.b`` when that is a module,
  else to ``autoprune.a``.
* torch_pruning is imported only inside ``autoprune/engine/``; optuna and ray only inside
  ``autoprune/backends/`` (every import statement counts here, ``TYPE_CHECKING`` ones too;
  strings and docstrings do not).
* Sizes: median module <= 200 lines and none over 450 (every ``.py`` file under ``autoprune/``,
  ``__init__.py`` included, as ``wc -l`` counts); no function or method over 60 lines.
* ``ruff check --select PLR0913`` (more than 5 arguments) findings halved from HEAD b877640's 31.
"""

from __future__ import annotations

import ast
import json
import shutil
import statistics
import subprocess
import sys
import textwrap
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "autoprune"

#: third-party package -> the only subpackage (relative to the package root) that may import it
CONFINED = {"torch_pruning": "engine", "optuna": "backends", "ray": "backends"}
MAX_MODULE_LINES = 450
MAX_MEDIAN_LINES = 200
MAX_FUNCTION_LINES = 60
PLR0913_AT_HEAD = 31  # b877640, before the redesign


@dataclass(frozen=True)
class Import:
    """One import in ``module``: ``target`` is the absolute dotted name it loads."""

    module: str
    file: str  # relative to the folder above the package, e.g. autoprune/plan.py
    line: int
    target: str
    type_checking: bool
    local: bool  # inside a function

    def where(self) -> str:
        return f"{self.file}:{self.line}"


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under the package folder ``root``."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _literal_import(node: ast.Call) -> str | None:
    """The module of ``importlib.import_module("x")`` / ``__import__("x")``, when a literal."""
    func = node.func
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
    if name not in {"import_module", "__import__"} or not node.args:
        return None
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    return None


class _Collector(ast.NodeVisitor):
    """Every import of one module, with whether it runs only for type checkers or in a function."""

    def __init__(self, module: str, file: str, modules: set[str]) -> None:
        self.module, self.file, self.modules = module, file, modules
        self.is_package = file.endswith("/__init__.py")
        self.found: list[Import] = []
        self._type_checking = 0
        self._functions = 0

    def visit_Module(self, node: ast.Module) -> None:
        for stmt in node.body:
            lazy_map = (isinstance(stmt, ast.FunctionDef) and stmt.name == "__getattr__"
                        and self.is_package)
            if not lazy_map:
                self.visit(stmt)

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self._type_checking += 1
        for stmt in node.body:
            self.visit(stmt)
        self._type_checking -= 1
        for stmt in node.orelse:
            self.visit(stmt)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._functions += 1
        self.generic_visit(node)
        self._functions -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node.lineno, self._longest_module(alias.name))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self._absolute(node)
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            self._add(node.lineno, sub if sub in self.modules else self._longest_module(base))

    def visit_Call(self, node: ast.Call) -> None:
        name = _literal_import(node)
        if name is not None:
            self._add(node.lineno, self._longest_module(name))
        self.generic_visit(node)

    def _absolute(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        package = self.module if self.is_package else self.module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        return f"{package}.{node.module}" if node.module else package

    def _longest_module(self, name: str) -> str:
        """``autoprune.a.b.attr`` -> ``autoprune.a.b`` if that is a module; third-party as is."""
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            if ".".join(parts[:end]) in self.modules:
                return ".".join(parts[:end])
        return name

    def _add(self, line: int, target: str) -> None:
        self.found.append(Import(self.module, self.file, line, target,
                                 self._type_checking > 0, self._functions > 0))


def collect_imports(root: Path) -> list[Import]:
    files = module_files(root)
    found: list[Import] = []
    for module, path in files.items():
        file = path.relative_to(root.parent).as_posix()
        collector = _Collector(module, file, set(files))
        collector.visit(ast.parse(path.read_text(), filename=str(path)))
        found.extend(collector.found)
    return found


def import_graph(root: Path) -> dict[str, dict[str, list[Import]]]:
    """module -> imported module -> the imports that make that edge (runtime ones only)."""
    modules = set(module_files(root))
    graph: dict[str, dict[str, list[Import]]] = {m: {} for m in sorted(modules)}
    for imp in collect_imports(root):
        if imp.type_checking or imp.target not in modules or imp.target == imp.module:
            continue
        graph[imp.module].setdefault(imp.target, []).append(imp)
    return graph


def strongly_connected(graph: dict[str, dict[str, list[Import]]]) -> list[list[str]]:
    """Tarjan's algorithm: the components with more than one module (each holds a cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return sorted(found)


def shortest_cycle(graph: dict[str, dict[str, list[Import]]], members: list[str]) -> list[str]:
    """A shortest cycle through the first member, staying inside its component."""
    start, inside = members[0], set(members)
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in graph[node]:
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if nxt in inside and nxt not in parent:
                parent[nxt] = node
                queue.append(nxt)
    raise AssertionError(f"no cycle through {start} in {members}")


def describe_cycles(root: Path) -> list[str]:
    graph = import_graph(root)
    problems = []
    for members in strongly_connected(graph):
        cycle = shortest_cycle(graph, members)
        lines = [f"cycle {' -> '.join(cycle)}"]
        for src, dst in pairwise(cycle):
            for imp in graph[src][dst]:  # one line per statement, not per imported name
                how = " (inside a function)" if imp.local else ""
                line = f"    {imp.where()} imports {dst}{how}"
                if line not in lines:
                    lines.append(line)
        if len(members) > len(cycle) - 1:
            lines.append(f"    (all entangled: {', '.join(members)})")
        problems.append("\n".join(lines))
    return problems


def confinement_violations(root: Path) -> list[str]:
    problems = []
    for imp in collect_imports(root):
        home = CONFINED.get(imp.target.split(".")[0])
        if home is None:
            continue
        allowed = f"{root.name}.{home}"
        if imp.module != allowed and not imp.module.startswith(allowed + "."):
            problems.append(f"{imp.where()} imports {imp.target}; only {root.name}/{home}/ may")
    return problems


Function = ast.FunctionDef | ast.AsyncFunctionDef


def _functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, Function]]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, Function | ast.ClassDef):
            name = f"{prefix}{node.name}"
            if isinstance(node, Function):
                yield name, node
            yield from _functions(node, f"{name}.")
        else:
            yield from _functions(node, prefix)


def long_functions(root: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    problems = []
    for path in module_files(root).values():
        file = path.relative_to(root.parent).as_posix()
        for name, node in _functions(ast.parse(path.read_text(), filename=str(path))):
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            if size > limit:
                problems.append(f"{file}:{node.lineno} {name}: {size} lines (limit {limit})")
    return sorted(problems)


def module_sizes(root: Path) -> dict[str, int]:
    return {path.relative_to(root.parent).as_posix(): len(path.read_text().splitlines())
            for path in module_files(root).values()}


def size_problems(root: Path) -> list[str]:
    sizes = module_sizes(root)
    problems = [f"{name}: {n} lines (limit {MAX_MODULE_LINES})"
                for name, n in sorted(sizes.items(), key=lambda kv: -kv[1])
                if n > MAX_MODULE_LINES]
    median = statistics.median(sizes.values())
    if median > MAX_MEDIAN_LINES:
        big = ", ".join(f"{name} {n}" for name, n in sorted(sizes.items(), key=lambda kv: -kv[1])
                        if n > MAX_MEDIAN_LINES)
        problems.append(f"median module {median:g} lines over {len(sizes)} modules (limit "
                        f"{MAX_MEDIAN_LINES}); over {MAX_MEDIAN_LINES}: {big}")
    return problems


def _report(title: str, problems: list[str]) -> str:
    return f"{title} ({len(problems)}):\n" + "\n".join(f"  {p}" for p in problems)


# --- the rules, on autoprune/ -----------------------------------------------------------------


def test_no_import_cycles() -> None:
    cycles = describe_cycles(PACKAGE)
    assert not cycles, _report("import cycles inside autoprune/ (function-local imports count; "
                               "break them with a neutral module or a TYPE_CHECKING import)",
                               cycles)


def test_heavy_dependencies_are_confined() -> None:
    bad = confinement_violations(PACKAGE)
    assert not bad, _report("torch_pruning belongs in autoprune/engine/, optuna and ray in "
                            "autoprune/backends/", bad)


def test_module_sizes() -> None:
    bad = size_problems(PACKAGE)
    assert not bad, _report("module sizes", bad)


def test_no_long_functions() -> None:
    bad = long_functions(PACKAGE)
    assert not bad, _report(f"functions over {MAX_FUNCTION_LINES} lines (split them)", bad)


def test_too_many_arguments_halved() -> None:
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it is in the [test] extra)")
    out = subprocess.run([ruff, "check", "--select", "PLR0913", "--output-format", "json",
                          "--exit-zero", str(PACKAGE)],
                         capture_output=True, text=True, check=True, cwd=REPO).stdout
    found = [f"{Path(f['filename']).relative_to(REPO)}:{f['location']['row']} {f['message']}"
             for f in json.loads(out)]
    limit = PLR0913_AT_HEAD // 2
    assert len(found) <= limit, _report(
        f"ruff PLR0913 (more than 5 arguments): {len(found)} findings, at most {limit} (half of "
        f"{PLR0913_AT_HEAD}); group the rest in a frozen dataclass", found)


# --- the checkers themselves, on small packages made here -------------------------------------


def make_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


CLEAN = {
    "pkg/__init__.py": '''
        """Lazy: the map is no edge."""
        import importlib
        from pkg.errors import Oops
        _LAZY = {"run": "pkg.b"}
        def __getattr__(name):
            from pkg import b  # lazy, not an edge
            return getattr(importlib.import_module(_LAZY[name]), name)
    ''',
    "pkg/errors.py": "class Oops(Exception): ...\n",
    "pkg/a.py": '''
        """import optuna  (a docstring is not an import)"""
        from typing import TYPE_CHECKING
        from pkg.errors import Oops
        if TYPE_CHECKING:
            from pkg.b import run  # type checkers only: no edge
        else:
            pass
    ''',
    "pkg/b.py": '''
        from . import a
        from .sub.c import thing
        def run():
            import pkg.sub
            return a, thing
    ''',
    "pkg/sub/__init__.py": "from pkg.sub.c import thing\n",
    "pkg/sub/c.py": "import torch\nthing = 1\n",
    "pkg/engine/__init__.py": "import torch_pruning as tp\n",
    "pkg/backends/__init__.py": "",
    "pkg/backends/opt.py": "import optuna\nfrom ray import tune\n",
}


def test_checkers_accept_a_clean_package(tmp_path: Path) -> None:
    root = make_package(tmp_path, CLEAN)
    assert describe_cycles(root) == []
    assert confinement_violations(root) == []
    assert long_functions(root) == [] and size_problems(root) == []
    graph = import_graph(root)
    assert set(graph["pkg.b"]) == {"pkg.a", "pkg.sub.c", "pkg.sub"}
    assert set(graph["pkg.a"]) == {"pkg.errors"}  # not pkg.b: TYPE_CHECKING
    assert set(graph["pkg"]) == {"pkg.errors"}  # not pkg.b: the lazy __getattr__
    assert set(graph["pkg.sub"]) == {"pkg.sub.c"}  # and pkg.sub.c -> pkg.sub is no edge


@pytest.mark.parametrize("closing", [
    "def later():\n    from pkg.b import run\n",  # hidden in a function
    "import importlib\nB = importlib.import_module('pkg.b')\n",
    "from pkg import b\n",
    "from . import b\n",
])
def test_a_cycle_is_found_and_named(tmp_path: Path, closing: str) -> None:
    files = dict(CLEAN)
    files["pkg/a.py"] = closing
    problems = describe_cycles(make_package(tmp_path, files))
    assert len(problems) == 1
    assert problems[0].startswith("cycle pkg.a -> pkg.b -> pkg.a")
    assert "pkg/a.py:" in problems[0] and "pkg/b.py:2 imports pkg.a" in problems[0]


def test_a_longer_cycle_and_a_second_one(tmp_path: Path) -> None:
    files = dict(CLEAN)
    files["pkg/sub/c.py"] = "thing = 1\ndef f():\n    import pkg.b\n"  # b -> c -> b
    files["pkg/errors.py"] = "from pkg import x\n"
    files["pkg/x.py"] = "from pkg.y import z\n"
    files["pkg/y.py"] = "import pkg.errors\nz = 1\n"  # errors -> x -> y -> errors
    problems = describe_cycles(make_package(tmp_path, files))
    assert len(problems) == 2, problems
    assert any(p.startswith("cycle pkg.b -> pkg.sub.c -> pkg.b") for p in problems)
    assert any(p.startswith("cycle pkg.errors -> pkg.x -> pkg.y -> pkg.errors") for p in problems)
    assert any("(inside a function)" in p for p in problems)


def test_confinement_counts_every_import_statement(tmp_path: Path) -> None:
    files = dict(CLEAN)
    files["pkg/a.py"] = ('from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import optuna\n'
                         "def f():\n    import ray.tune\n")
    files["pkg/sub/c.py"] = "from torch_pruning.pruner import importance\n"
    files["pkg/backends/opt.py"] = "import torch_pruning\n"
    bad = confinement_violations(make_package(tmp_path, files))
    assert sorted(bad) == [
        "pkg/a.py:3 imports optuna; only pkg/backends/ may",
        "pkg/a.py:5 imports ray.tune; only pkg/backends/ may",
        "pkg/backends/opt.py:1 imports torch_pruning; only pkg/engine/ may",
        "pkg/sub/c.py:1 imports torch_pruning.pruner; only pkg/engine/ may",
    ]


def test_size_checks_name_what_is_too_big(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    files = {
        "pkg/__init__.py": "",
        "pkg/long.py": f"class K:\n    def method(self):\n{textwrap.indent(body, '    ')}\n"
                       f"        return 0\n" + "\n" * 400,
        "pkg/ok.py": f"def f():\n{body}\n",  # 61 lines: the limit is 60
        "pkg/sub/__init__.py": "",
        "pkg/sub/deep.py": "def g():\n" + "\n".join(body.splitlines()[:59]) + "\n",  # 60
    }
    root = make_package(tmp_path, files)
    assert long_functions(root) == ["pkg/long.py:2 K.method: 62 lines (limit 60)",
                                    "pkg/ok.py:1 f: 61 lines (limit 60)"]
    assert size_problems(root) == ["pkg/long.py: 463 lines (limit 450)"]


if __name__ == "__main__":  # a quick listing without pytest
    for check in (describe_cycles, confinement_violations, size_problems, long_functions):
        print(_report(check.__name__, check(PACKAGE)))
    sys.exit(0)
