"""The import check on small made-up trees (``make lint`` runs it on this repository)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from tests.support import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "check_imports.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_imports", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_imports = load_script()


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_clean_tree_passes(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "app/__init__.py": "from app.core import run\n",
            "app/core.py": "from app import util\nimport json\n",
            "app/util.py": "from . import types\n",
            "app/types.py": "",
            "pool/__init__.py": "from pool.heap import Heap\n",
            "pool/heap.py": "import collections\n",
        },
    )
    assert check_imports.check(root) == []


def test_a_cycle_is_found_with_its_path(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "app/__init__.py": "",
            "app/a.py": "from app.b import x\n",
            "app/b.py": "import app.c\n",
            "app/c.py": "from .a import y\n",
        },
    )
    assert check_imports.check(root) == [
        "import cycle among app.a, app.b, app.c: app.a -> app.b -> app.c -> app.a"
    ]


def test_an_import_inside_a_function_still_closes_a_cycle(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "store/__init__.py": "",
            "store/base.py": "def open_store():\n    from store.memory import Memory\n",
            "store/memory.py": "from store.base import Protocol\n",
        },
    )
    problems = check_imports.check(root)
    assert len(problems) == 1 and "store.base -> store.memory -> store.base" in problems[0]


def test_imports_only_for_type_checking_do_not_count(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "app/__init__.py": "",
            "app/a.py": "from app.b import x\n",
            "app/b.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from app.a import y\nelse:\n    import json\n"
            ),
        },
    )
    assert check_imports.check(root) == []


def test_a_submodule_importing_its_own_package_init_is_a_cycle(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {"app/__init__.py": "from app.a import x\n", "app/a.py": "from app import helper\n"},
    )
    assert check_imports.check(root) == ["import cycle among app, app.a: app -> app.a -> app"]


def test_standalone_packages_import_no_other_first_party_package(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "gateway/__init__.py": "import pool\n",
            "pool/__init__.py": "from normalizer import thing\n",
            "normalizer/__init__.py": "def thing(): import gateway.app\n",
            "gateway/app.py": "",
        },
    )
    assert check_imports.check(root) == [
        "normalizer imports gateway.app: normalizer must stand alone",
        "pool imports normalizer: pool must stand alone",
    ]


def test_the_product_does_not_need_the_simulator_or_the_tests(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "gateway/__init__.py": "from sim.app import create\nimport tests.support\n",
            "sim/__init__.py": "",
            "sim/app.py": "",
            "tests/__init__.py": "",
            "tests/support.py": "",
        },
    )
    assert check_imports.check(root) == [
        "gateway imports sim.app: the product must not need sim",
        "gateway imports tests.support: the product must not need tests",
    ]


def test_the_script_exits_non_zero_and_names_each_problem(tmp_path: Path) -> None:
    root = tree(tmp_path, {"a/__init__.py": "import a.b\n", "a/b.py": "import a\n"})
    run = subprocess.run(
        [sys.executable, str(SCRIPT), str(root)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 1
    assert run.stderr == "import cycle among a, a.b: a -> a.b -> a\n"
    clean = tree(tmp_path / "clean", {"a/__init__.py": "import json\n"})
    run = subprocess.run(
        [sys.executable, str(SCRIPT), str(clean)], capture_output=True, text=True, check=False
    )
    assert (run.returncode, run.stderr) == (0, "")
