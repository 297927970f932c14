"""Fail on an import cycle among first-party modules, or on a package importing across a
boundary it must not cross.

    python scripts/check_imports.py [ROOT]

First-party modules are the ``.py`` files of every top-level package (a directory with
``__init__.py``) under ROOT. Every ``import`` counts, including ones inside functions
(a lazy import still closes a cycle when it runs); only imports under
``if TYPE_CHECKING:`` are skipped, since they never run. Importing a submodule does not
count as importing its parent package's ``__init__``, which would make every package
that re-exports its own modules look cyclic.

Boundaries: ``normalizer``, ``pool`` and ``statestore`` each stand alone (no other
first-party package), and no product package imports the simulator, the tests, the
benchmarks or the deploy helpers.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

STANDALONE = frozenset({"normalizer", "pool", "statestore"})
PRODUCT = frozenset({"gateway"} | STANDALONE)
NOT_FOR_PRODUCT = frozenset({"sim", "tests", "bench", "deploy"})


def find_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every top-level package under root."""
    modules: dict[str, Path] = {}
    for init in sorted(root.glob("*/__init__.py")):
        for path in sorted(init.parent.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if all(part.isidentifier() for part in parts):
                modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under node, except those under ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _imports(ast.Module(body=[other], type_ignores=[]))
        else:
            yield from _imports(child)


def _base_of(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` reads from."""
    if not node.level:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The first-party module ``name`` loads (its longest known prefix), if any."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The first-party modules ``module`` imports."""
    found: set[str] = set()
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = _base_of(module, path, node)
            # ``from pkg import sub`` loads pkg.sub when that is a module, else pkg.
            targets = [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            hit = _known(target, modules)
            if hit is not None and hit != module:
                found.add(hit)
    return found


def build_graph(root: Path) -> dict[str, set[str]]:
    modules = find_modules(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The modules of each import cycle (strongly connected components of two or more)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(start: str) -> None:
        # Tarjan's algorithm, iterative so deep graphs cannot hit the recursion limit.
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            connect(name)
    return found


def _path_within(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A closed import path through the component, from its first module back to it."""
    start = min(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & component):
                if nxt == start:
                    path = [start]
                    while node != start:
                        path.append(node)
                        node = previous[node]
                    return [start, *reversed(path[1:]), start]
                if nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError("a strongly connected component always has a cycle")


def boundary_violations(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        package = module.partition(".")[0]
        for target in sorted(targets):
            other = target.partition(".")[0]
            if other == package:
                continue
            if package in STANDALONE:
                problems.append(f"{module} imports {target}: {package} must stand alone")
            elif package in PRODUCT and other in NOT_FOR_PRODUCT:
                problems.append(f"{module} imports {target}: the product must not need {other}")
    return problems


def check(root: Path) -> list[str]:
    graph = build_graph(root)
    problems = [
        f"import cycle among {', '.join(members)}: "
        + " -> ".join(_path_within(graph, set(members)))
        for members in cycles(graph)
    ]
    return problems + boundary_violations(graph)


def main(argv: Iterable[str] = sys.argv[1:]) -> int:
    args = list(argv)
    root = Path(args[0]) if args else Path(__file__).resolve().parents[1]
    problems = check(root)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
