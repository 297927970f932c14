"""The size check on small made-up trees (``make lint`` runs it on this repository)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from tests.support import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "check_sizes.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_sizes", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_sizes = load_script()


def function(name: str, body_lines: int, docstring: str = "") -> str:
    doc = f'    """{docstring}"""\n' if docstring else ""
    return f"def {name}() -> None:\n{doc}" + "    x = 1\n" * body_lines


def write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_short_modules_and_functions_pass(tmp_path: Path) -> None:
    write(tmp_path, "gateway/a.py", function("short", 59))
    assert check_sizes.problems(tmp_path) == []


def test_a_function_over_the_limit_is_named_with_its_line(tmp_path: Path) -> None:
    write(tmp_path, "pool/a.py", "import os\n\n" + function("long", 60))
    assert check_sizes.problems(tmp_path) == [
        "pool/a.py:3: function long has 61 lines (limit 60); "
        "split it or say 'Long because ...' in its docstring"
    ]


def test_methods_and_nested_functions_count_too(tmp_path: Path) -> None:
    method = "class A:\n" + "".join("    " + line + "\n" for line in function("m", 61).splitlines())
    write(tmp_path, "sim/a.py", method)
    [problem] = check_sizes.problems(tmp_path)
    assert problem.startswith("sim/a.py:2: function m has 62 lines")


def test_a_reason_in_the_docstring_excuses_a_long_function(tmp_path: Path) -> None:
    reason = "Does one thing.\n\n    Long because the steps share ten locals.\n    "
    write(tmp_path, "normalizer/a.py", function("long", 70, reason))
    write(tmp_path, "statestore/b.py", function("vague", 70, "It is long, sorry."))
    [problem] = check_sizes.problems(tmp_path)
    assert problem.startswith("statestore/b.py:1: function vague")


def test_a_module_over_the_limit_fails(tmp_path: Path) -> None:
    write(tmp_path, "gateway/big.py", "x = 1\n" * 451)
    write(tmp_path, "gateway/ok.py", "x = 1\n" * 450)
    assert check_sizes.problems(tmp_path) == [
        "gateway/big.py: module has 451 lines (limit 450); split it"
    ]


def test_only_product_packages_are_checked(tmp_path: Path) -> None:
    write(tmp_path, "tests/test_big.py", "x = 1\n" * 900 + function("long", 100))
    write(tmp_path, "bench/run.py", function("long", 100))
    assert check_sizes.problems(tmp_path) == []


def test_the_command_exits_nonzero_and_prints_each_problem(tmp_path: Path) -> None:
    write(tmp_path, "gateway/a.py", function("long", 80))
    run = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 1
    assert run.stdout.startswith("gateway/a.py:1: function long has 81 lines")
    write(tmp_path, "gateway/a.py", function("short", 10))
    clean = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert (clean.returncode, clean.stdout) == (0, "")
