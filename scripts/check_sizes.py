"""Fail on a product module or function too long to read in one sitting.

    python scripts/check_sizes.py [ROOT]

A module of a product package (``gateway``, ``normalizer``, ``pool``, ``statestore``,
``sim``) may have at most MAX_MODULE_LINES lines; a function or method at most
MAX_FUNCTION_LINES, counted from its ``def`` line to its last line, unless its docstring
has a line starting with ``Long because`` that says why splitting it would hurt.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

PRODUCT = ("gateway", "normalizer", "pool", "statestore", "sim")
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60
REASON = "Long because"


def product_files(root: Path) -> Iterator[Path]:
    for package in PRODUCT:
        yield from sorted((root / package).rglob("*.py"))


def _excused(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    doc = ast.get_docstring(node) or ""
    return any(line.strip().startswith(REASON) for line in doc.splitlines())


def problems_in(path: Path, text: str, label: str) -> Iterator[str]:
    lines = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
    if lines > MAX_MODULE_LINES:
        yield f"{label}: module has {lines} lines (limit {MAX_MODULE_LINES}); split it"
    for node in ast.walk(ast.parse(text, filename=str(path))):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        length = (node.end_lineno or node.lineno) - node.lineno + 1
        if length > MAX_FUNCTION_LINES and not _excused(node):
            yield (
                f"{label}:{node.lineno}: function {node.name} has {length} lines "
                f"(limit {MAX_FUNCTION_LINES}); split it or say '{REASON} ...' in its docstring"
            )


def problems(root: Path) -> list[str]:
    found: list[str] = []
    for path in product_files(root):
        label = path.relative_to(root).as_posix()
        found.extend(problems_in(path, path.read_text(encoding="utf-8"), label))
    return found


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1]
    found = problems(root)
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
