"""The repository stands alone: no comment, doc or config points at documents that are not
in it (requirement ids, spec sections, issue numbers) or at the machine it was written on.
A reader should find the behaviour described where it is implemented."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from tests.support import REPO_ROOT

# Built from pieces so that this file does not match itself.
SECTION = "\u00a7"
OUTSIDE_REFERENCES = re.compile(
    "|".join(
        [
            r"\bR-[0-9]{2}\b",  # requirement ids
            "SPEC" + r"(\.md)?\s*" + SECTION,
            "PROTOCOL" + r"(\.md)?\s*" + SECTION + "?" + r"\s*[0-9]",
            SECTION,
            r"(?i:\bissue\s+#?[0-9]+)",
        ]
    )
)
MACHINE_PATHS = re.compile(
    "|".join(["/" + "work/", "/" + "root/", "/" + "home/", "/tmp/" + "hostile"])
)

SKIPPED_DIRS = {".git", ".cache", "node_modules", "__pycache__"}
TEXT_SUFFIXES = {
    ".py",
    ".md",
    ".toml",
    ".yaml",
    ".yml",
    ".sh",
    ".json",
    ".conf",
    ".template",
    ".cfg",
    ".ini",
    ".txt",
}
TEXT_NAMES = {"Makefile", "Dockerfile", ".dockerignore", ".gitignore", "run"}


def _skipped(directory: str) -> bool:
    """Tool output, caches and virtualenvs (.venv, .venv-min, the bench's .venv-litellm)."""
    return (
        directory in SKIPPED_DIRS or directory.startswith(".venv") or directory.endswith("_cache")
    )


def repository_text_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).parts
        if any(_skipped(part) for part in relative[:-1]):
            continue
        if path.is_file() and (path.suffix in TEXT_SUFFIXES or path.name in TEXT_NAMES):
            yield path


def offending_lines(pattern: re.Pattern[str]) -> list[str]:
    found = []
    for path in repository_text_files(REPO_ROOT):
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if pattern.search(line):
                found.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    return found


def test_the_scan_covers_product_tests_docs_and_deploy() -> None:
    scanned = {p.relative_to(REPO_ROOT).parts[0] for p in repository_text_files(REPO_ROOT)}
    assert {"gateway", "normalizer", "pool", "statestore", "sim", "tests", "docs"} <= scanned
    assert {"deploy", "bench", "scripts", "Makefile", "README.md"} <= scanned


def test_the_patterns_catch_what_they_are_for() -> None:
    for line in [
        "see R" + "-12",
        "(" + "SPEC " + SECTION + "5)",
        "PROTOCOL.md " + SECTION + "3-4",
        "PROTO" + "COL 3.1: a turn",
        "fixed in Iss" + "ue 3",
    ]:
        assert OUTSIDE_REFERENCES.search(line), line
    for line in ["HTTP/1.1 101", "R-tree", "an issue with 3 sockets", "wsproto + Protocol 19.0"]:
        assert not OUTSIDE_REFERENCES.search(line), line
    assert MACHINE_PATHS.search("open('/" + "work/main/x')")
    assert not MACHINE_PATHS.search("/usr/sbin/nginx or /tmp/x")


def test_nothing_refers_to_documents_outside_the_repository() -> None:
    assert offending_lines(OUTSIDE_REFERENCES) == []


def test_no_absolute_path_of_a_development_machine() -> None:
    assert offending_lines(MACHINE_PATHS) == []
